//! Chromium's offer as the `connect` webhook carries it to the bridge.
//!
//! The page (caller.js) makes it look like Meta's (spec §8.1) as a libwebrtc client would: one
//! audio m-line, Opus 111 and telephone-event/8000 126 only (`setCodecPreferences`), Meta's Opus
//! fmtp (`minptime=20` among them; munged before `setLocalDescription`, because the bridge finds
//! no Opus in Chromium's `minptime=10`), every candidate gathered before it is sent (no
//! trickle). The one edit here, on the copy sent: of Chromium's candidates (UDP and
//! TCP, on every interface, IPv4 and IPv6) only the UDP ones on 127.0.0.1 are kept, as Meta's
//! offer carries one IPv4 host candidate (and one IPv6) and the calls run on loopback. The rest
//! (the ICE role, `a=extmap`, `a=ssrc`, `mid:0`) is left as Chromium wrote it: the bridge answers
//! it as it is.

/// The loopback address the bridge binds with `WEBRTC_LOOPBACK=true`.
const LOOPBACK: &str = "127.0.0.1";

/// The offer with only its loopback UDP candidates; CRLF line endings as Chromium writes them.
pub fn for_the_bridge(offer: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines() {
        if let Some(candidate) = line.strip_prefix("a=candidate:") {
            let fields: Vec<&str> = candidate.split_ascii_whitespace().collect();
            let udp = fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("udp"));
            if !(udp && fields.get(4) == Some(&LOOPBACK)) {
                continue;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer Chromium 156 made in the page (`caller.js`).
    const CHROMIUM_OFFER: &str = "v=0\r\n\
o=- 8148665363903121829 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS e1caf037-0da3-413f-a735-983cfb81e6d0\r\n\
m=audio 42493 UDP/TLS/RTP/SAVPF 111 126\r\n\
c=IN IP4 127.0.0.1\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:3803817900 1 udp 2122194687 127.0.0.1 42493 typ host generation 0 network-id 3 network-cost 50\r\n\
a=candidate:102323512 1 udp 2122063615 192.0.2.2 33192 typ host generation 0 network-id 1\r\n\
a=candidate:4086674724 1 udp 2122267903 ::1 36861 typ host generation 0 network-id 4 network-cost 50\r\n\
a=candidate:3447690456 1 udp 2122134271 fd00::2 33258 typ host generation 0 network-id 2\r\n\
a=candidate:471036728 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active generation 0 network-id 3 network-cost 50\r\n\
a=candidate:4172513708 1 tcp 1518083839 192.0.2.2 9 typ host tcptype active generation 0 network-id 1\r\n\
a=candidate:222257584 1 tcp 1518288127 ::1 9 typ host tcptype active generation 0 network-id 4 network-cost 50\r\n\
a=candidate:869613644 1 tcp 1518154495 fd00::2 9 typ host tcptype active generation 0 network-id 2\r\n\
a=ice-ufrag:XXMX\r\n\
a=ice-pwd:iMrTOkOOoMkqMyXYyO2s3zaH\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 CD:77:AE:1E:41:95:37:67:B9:EB:E6:C0:13:0E:E9:7E:6A:A2:46:F6:13:99:F6:56:3D:CC:4B:74:0E:79:F3:7A\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendrecv\r\n\
a=msid:e1caf037-0da3-413f-a735-983cfb81e6d0 d0e8a629-ad8b-42d8-818c-d4953d6d4666\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtcp-xr:rcvr-rtt=all\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:3233463845 cname:Owu0e/C1Fr6gWtHc\r\n\
a=ssrc:3233463845 msid:e1caf037-0da3-413f-a735-983cfb81e6d0 d0e8a629-ad8b-42d8-818c-d4953d6d4666\r\n";

    #[test]
    fn only_the_loopback_udp_candidate_is_kept_and_nothing_else_changes() {
        let offer = for_the_bridge(CHROMIUM_OFFER);
        let candidates: Vec<&str> = offer
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert_eq!(
            candidates,
            [
                "a=candidate:3803817900 1 udp 2122194687 127.0.0.1 42493 typ host generation 0 network-id 3 network-cost 50"
            ]
        );
        let others = |sdp: &str| -> Vec<String> {
            sdp.lines()
                .filter(|l| !l.starts_with("a=candidate:"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(others(&offer), others(CHROMIUM_OFFER));
        assert!(offer.ends_with("\r\n"));
        bridge::whatsapp::sdp::inspect(&offer).expect("the bridge takes it");
    }
}
