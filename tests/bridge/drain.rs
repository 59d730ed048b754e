//! Graceful drain of the real binary: SIGTERM turns readiness off at once and refuses new calls
//! while live calls go on; calls that outlast DRAIN_TIMEOUT are ended cleanly; exit code 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sim::graph_double::{GraphDouble, GraphDoubleConfig};
use sim::phone::{PhoneCall, PhoneSettings};
use sim::realtime_ai::{AiDoubleConfig, RealtimeAiDouble};
use tokio::process::{Child, Command};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-voice-bridge");
const SECRET: &str = "drain-test-secret";

/// The bridge as its own process, wired to doubles in this test process.
struct Bridge {
    child: Child,
    url: String,
    graph: GraphDouble,
    _ai: RealtimeAiDouble,
    http: reqwest::Client,
}

impl Bridge {
    async fn start(drain_timeout: &str) -> Bridge {
        let graph_config = GraphDoubleConfig::default();
        let graph = GraphDouble::start(graph_config.clone())
            .await
            .expect("graph double");
        let ai_config = AiDoubleConfig::default();
        let ai = RealtimeAiDouble::start(ai_config.clone())
            .await
            .expect("AI double");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("WHATSAPP_APP_SECRET", SECRET)
            .env("WHATSAPP_VERIFY_TOKEN", "verify")
            .env("WHATSAPP_GRAPH_URL", graph.base_url())
            .env("WHATSAPP_PHONE_NUMBER_ID", &graph_config.phone_number_id)
            .env("WHATSAPP_ACCESS_TOKEN", &graph_config.access_token)
            .env("OPENAI_API_KEY", &ai_config.api_key)
            .env("OPENAI_REALTIME_URL", ai.url())
            .env("WEBRTC_LOOPBACK", "true")
            .env("ASSISTANT_GREETING", "off")
            .env("DRAIN_TIMEOUT", drain_timeout)
            .env(
                "DATA_DIR",
                std::env::temp_dir().join(format!("wvb-drain-{}", rand::random::<u64>())),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("bridge starts");
        let bridge = Bridge {
            child,
            url: format!("http://127.0.0.1:{port}"),
            graph,
            _ai: ai,
            http: reqwest::Client::new(),
        };
        // Wait for the process to listen (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while bridge.ready_status().await.is_none() {
            assert!(Instant::now() < deadline, "the bridge did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bridge
    }

    fn phone(&self) -> PhoneSettings {
        PhoneSettings::on_loopback(
            self.url.clone(),
            SECRET,
            self.graph.clone(),
            self.http.clone(),
        )
    }

    async fn ready_status(&self) -> Option<u16> {
        let response = self
            .http
            .get(format!("{}/ready", self.url))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    async fn answered(&self, n: u32) -> PhoneCall {
        let id = call_id(&format!("drain{n}"));
        let call = PhoneCall::dial(self.phone(), id.clone(), user(800 + n), "Caller")
            .await
            .expect("dial");
        assert_eq!(call.reply.status, 200);
        assert!(self.graph.wait_for(&id, "accept", WAIT).await.is_some());
        assert!(call.wait_until(WAIT, |r| r.packets_received > 0).await);
        call
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the bridge exits in time")
            .expect("exit status")
            .code()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_intake_at_once_while_live_calls_go_on_to_their_end() {
    let mut bridge = Bridge::start("30s").await;
    let calls = vec![
        bridge.answered(1).await,
        bridge.answered(2).await,
        bridge.answered(3).await,
    ];

    let signalled = Instant::now();
    bridge.sigterm();
    while bridge.ready_status().await != Some(503) {
        assert!(
            signalled.elapsed() < Duration::from_millis(100),
            "/ready still 200 after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A new caller is refused: declined with reject, and the webhook answered 200 with the
    // refusal (a redelivery would be pointless).
    let late = PhoneCall::dial(bridge.phone(), call_id("late"), user(899), "Caller")
        .await
        .expect("dial");
    assert_eq!(late.reply.status, 200);
    assert_eq!(late.reply.refusal().as_deref(), Some("draining"));
    assert!(
        bridge
            .graph
            .wait_for(&late.call_id, "reject", WAIT)
            .await
            .is_some()
    );

    // The live calls keep flowing audio.
    for call in &calls {
        let before = call.recording().lock().packets_received;
        assert!(
            call.wait_until(WAIT, |r| r.packets_received >= before + 25)
                .await,
            "audio goes on during the drain"
        );
    }
    let ids: Vec<_> = calls.iter().map(|c| c.call_id.clone()).collect();
    for call in calls {
        call.hang_up().await.expect("hang up");
    }
    assert_eq!(bridge.exit_code(Duration::from_secs(10)).await, Some(0));
    for id in &ids {
        assert!(
            bridge
                .graph
                .actions_for(id)
                .iter()
                .all(|a| a.action != "terminate"),
            "calls the caller ended are not terminated again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outlasting_the_drain_timeout_are_terminated_and_the_process_exits_zero() {
    let mut bridge = Bridge::start("2s").await;
    let calls = vec![bridge.answered(11).await, bridge.answered(12).await];
    let signalled = Instant::now();
    bridge.sigterm();
    assert_eq!(bridge.exit_code(Duration::from_secs(10)).await, Some(0));
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "calls were not given their drain time"
    );
    for call in &calls {
        assert!(
            bridge
                .graph
                .actions_for(&call.call_id)
                .iter()
                .any(|a| a.action == "terminate" && a.status == 200),
            "terminate sent for {}",
            call.call_id
        );
    }
}
