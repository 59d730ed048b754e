//! Offers the WebRTC stack would not answer as written: Opus parameters that differ from the
//! bridge's own (`minptime=10`, as Meta's older clients and browsers write it) still get an
//! answer with Opus, and what the caller said about FEC and bitrate is still read.

use bridge::media::peer::{MediaPeer, PeerProfile, PeerSettings};
use bridge::whatsapp::sdp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_other_opus_parameters_is_answered_with_opus() {
    let meta = testkit::fixtures::meta_offer();
    let older = meta.replace(
        "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1",
        "minptime=10;useinbandfec=1",
    );
    assert_ne!(older, meta, "the fixture's Opus line was replaced");
    for offer in [meta, older] {
        let info = sdp::inspect(&offer).expect("a usable offer");
        assert!(
            info.opus_fec,
            "useinbandfec=1 is read from the offer itself"
        );
        let prepared = sdp::prepare_offer(&offer);
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let mut bridge = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let answer = sdp::normalize_answer(&bridge.answer(&prepared.sdp).await.expect("answer"));
        bridge.close().await;
        sdp::validate_answer(&offer, &answer).expect("the answer carries Opus as Meta wants");
        assert!(answer.contains("a=rtpmap:111 opus/48000/2\r\n"), "{answer}");
        let fmtp = answer
            .lines()
            .find_map(|line| line.strip_prefix("a=fmtp:111 "))
            .expect("an Opus fmtp line");
        let parameters: Vec<&str> = fmtp.split(';').collect();
        for ours in ["minptime=20", "useinbandfec=1"] {
            assert_eq!(
                parameters
                    .iter()
                    .filter(|p| p.starts_with(ours.split('=').next().unwrap()))
                    .collect::<Vec<_>>(),
                [&ours],
                "the answer asks for 20 ms packets with FEC: {fmtp}"
            );
        }
    }
}
