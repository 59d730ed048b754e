//! `SCHED_FIFO_PRIORITY`: the real binary's runtime threads run `SCHED_FIFO` (what `chrt -p`
//! shows), the threads they start do not, the metric says so, and a call is served.

use bridge::config::SCHED_FIFO_PRIORITY;
use bridge::media::codec::EncoderSettings;
use sim::bridge_process::{Bridge, Launch};
use sim::graph_double::{GraphDouble, GraphDoubleConfig};
use sim::phone::{PhoneCall, PhoneSettings};
use sim::realtime_ai::{AiDoubleConfig, RealtimeAiDouble};
use testkit::scheduling::{SCHED_FIFO, thread_policy};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-voice-bridge");
const SECRET: &str = "scheduling-test-secret";
const PRIORITY: u32 = 7;

/// Whether this process may set a real-time policy: `CAP_SYS_NICE` (bit 23) in its effective
/// capabilities. The bridge started here has the same.
fn may_set_realtime() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0)
}

/// Each thread of `pid`: its name, policy and real-time priority.
fn threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let entry = entry.expect("task");
        let tid: u32 = entry
            .file_name()
            .to_str()
            .expect("tid")
            .parse()
            .expect("tid");
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if let Some((policy, priority)) = thread_policy(pid, tid) {
            let name = if tid == pid {
                "main".to_owned()
            } else {
                name.trim_end().to_owned()
            };
            threads.push((name, policy, priority));
        }
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_threads_run_sched_fifo_and_the_calls_are_served() {
    let graph_config = GraphDoubleConfig::default();
    let graph = GraphDouble::start(graph_config)
        .await
        .expect("graph double");
    let ai = RealtimeAiDouble::start(AiDoubleConfig::default())
        .await
        .expect("AI double");
    let dir = std::env::temp_dir().join(format!("wvb-sched-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let log = dir.join("bridge.log");
    let bridge = Bridge::start(Launch {
        graph_url: graph.base_url(),
        ai_url: ai.url(),
        app_secret: SECRET,
        max_calls: 4,
        encoder: EncoderSettings::default(),
        log: &log,
        cpus: None,
        exe: Some(std::path::Path::new(BIN)),
        settings: vec![(SCHED_FIFO_PRIORITY.to_owned(), PRIORITY.to_string())],
    })
    .await
    .expect("bridge starts");

    // A call is served: it is answered and the caller hears the AI's audio.
    let phone = PhoneSettings::on_loopback(
        bridge.url.clone(),
        SECRET,
        graph.clone(),
        reqwest::Client::new(),
    );
    let id = call_id("sched-fifo");
    let call = PhoneCall::dial(phone, id.clone(), user(901), "Caller")
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200, "{}", call.reply.body);
    assert!(graph.wait_for(&id, "accept", WAIT).await.is_some());
    assert!(
        call.wait_until(WAIT, |r| r.packets_received >= 50).await,
        "the caller hears the bridge"
    );

    let threads = threads(bridge.pid);
    let gauge = bridge
        .metrics()
        .await
        .expect("metrics")
        .value("whatsapp_bridge_sched_fifo_priority", &[]);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    call.hang_up().await.expect("hang up");
    bridge.stop().await;

    // tokio names its workers and blocking threads `tokio-rt-worker` (older versions:
    // `tokio-runtime-worker`, which the kernel cuts to 15 bytes).
    let runtime = |name: &str| name == "main" || name.starts_with("tokio-r");
    assert!(threads.iter().any(|(name, ..)| name == "main"));
    if may_set_realtime() {
        assert_eq!(gauge, f64::from(PRIORITY), "{log_text}");
        for (name, policy, priority) in &threads {
            if runtime(name) {
                assert_eq!((*policy, *priority), (SCHED_FIFO, PRIORITY), "{name}");
            } else {
                // The store's thread and the allocator's: scheduled normally.
                assert_eq!((*policy, *priority), (0, 0), "{name}");
            }
        }
        assert!(
            threads.iter().any(|(name, ..)| !runtime(name)),
            "threads started later are there to check: {threads:?}"
        );
    } else {
        // Without the privilege the bridge runs on, scheduled normally, and says why.
        assert_eq!(gauge, 0.0);
        assert!(log_text.contains("SCHED_FIFO_PRIORITY could not be applied"));
        assert!(threads.iter().all(|(_, policy, _)| *policy == 0));
    }
}
