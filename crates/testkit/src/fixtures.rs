//! Meta's payloads from whatsapp-calling §12, as the files in `fixtures/` hold them, and the SDP
//! offer and answer of that section. One copy for every test that needs them.

/// §12.1: a user-initiated `connect` with Meta's SDP offer.
pub const CONNECT_UIC: &str = include_str!("../fixtures/connect_uic.json");
/// §12.3: a `terminate` of a completed call.
pub const TERMINATE_COMPLETED: &str = include_str!("../fixtures/terminate_completed.json");
/// §12.3: a `terminate` of a failed call, with errors.
pub const TERMINATE_FAILED: &str = include_str!("../fixtures/terminate_failed.json");
/// §12.4: a business-initiated call's `RINGING` status.
pub const BIC_STATUS_RINGING: &str = include_str!("../fixtures/bic_status_ringing.json");
/// §4.6: a `messages` webhook carrying the user's accepting reply to our call-permission request.
pub const PERMISSION_REPLY: &str = include_str!("../fixtures/permission_reply.json");
/// §9.2: a `GET …/call_permissions` response (temporary permission, start_call quota exhausted).
pub const CALL_PERMISSIONS: &str = include_str!("../fixtures/call_permissions.json");

/// The §12.2 answer: what the business side sends in `pre_accept` and `accept`.
pub const META_ANSWER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE audio\r\na=msid-semantic: WMS agent\r\nm=audio 40000 UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 198.51.100.20\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2130706431 198.51.100.20 40000 typ host\r\na=end-of-candidates\r\na=ice-ufrag:b7Xq9LmN\r\na=ice-pwd:9hT2mKx4VwZr8LpQ3sN6yD1c\r\na=fingerprint:sha-256 5B:5B:49:04:FD:28:1D:E8:49:B8:9D:8E:80:83:BB:C9:35:FC:BB:6E:BE:2F:28:B4:EE:A6:5B:48:92:6F:62:CA\r\na=setup:active\r\na=mid:audio\r\na=sendrecv\r\na=msid:agent agent-audio\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=20;useinbandfec=1\r\na=rtpmap:126 telephone-event/8000\r\na=ptime:20\r\na=maxptime:20\r\na=ssrc:2859301122 cname:agent\r\n";

/// The §12.1 offer, taken from [`CONNECT_UIC`] so the two cannot drift apart.
pub fn meta_offer() -> String {
    let fixture: serde_json::Value =
        serde_json::from_str(CONNECT_UIC).expect("the connect fixture is JSON");
    fixture["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"]
        .as_str()
        .expect("the connect fixture holds an SDP offer")
        .to_owned()
}

/// The §12.1 offer with its candidates moved to a dead loopback port (and its IPv6 candidate
/// dropped), so that nothing answering it ever sends off this machine.
pub fn loopback_offer() -> String {
    meta_offer()
        .lines()
        .filter(|line| !line.contains("2001:db8"))
        .map(|line| line.replace("203.0.113.49 3484", "127.0.0.1 9"))
        .map(|line| line.replace("203.0.113.49", "127.0.0.1"))
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_offer_names_no_address_but_loopback() {
        let offer = loopback_offer();
        assert!(offer.ends_with("\r\n"));
        assert!(offer.contains("a=candidate:3935165743 1 udp 2122260223 127.0.0.1 9 typ host"));
        assert!(!offer.contains("203.0.113.49"));
        assert!(!offer.contains("2001:db8"));
        assert_eq!(meta_offer().lines().count(), offer.lines().count() + 1);
    }
}
