//! A fleet: two or three bridge processes sharing one Redis, with each call's webhooks split
//! between them, over real WebRTC on loopback. Each test has a key prefix of its own (the local
//! Redis, or `TEST_REDIS_URL`); the Redis-outage test runs a `redis-server` of its own.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sim::bridge_process::Bridge;
use sim::fleet::{FleetOptions, FleetStack};
use sim::phone::{PhoneCall, post_webhook};
use sim::realtime_ai::{AiDoubleConfig, AiMode};
use sim::stack::APP_SECRET;
use tokio::process::{Child, Command};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-voice-bridge");
const ADMIN_TOKEN: &str = "fleet-admin-token";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn fleet_on(replicas: usize, redis_url: String, mode: AiMode) -> FleetStack {
    FleetStack::start(FleetOptions {
        replicas,
        max_calls: 10,
        redis_url,
        exe: Some(BIN.into()),
        ai: AiDoubleConfig {
            mode,
            ..AiDoubleConfig::default()
        },
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        log_dir: std::env::temp_dir().join(format!("wvb-fleet-{}", rand::random::<u64>())),
        settings: Vec::new(),
    })
    .await
    .expect("fleet starts")
}

async fn fleet(replicas: usize) -> FleetStack {
    fleet_on(replicas, redis_url(), AiMode::Echo).await
}

/// Dials replica `n` and waits until the call carries audio.
async fn answered_on(fleet: &FleetStack, n: usize, tag: &str, user_n: u32) -> PhoneCall {
    let id = call_id(tag);
    let call = PhoneCall::dial(fleet.phone_settings(n), id.clone(), user(user_n), "Caller")
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200, "{}", call.reply.body);
    assert_eq!(call.reply.refusal(), None);
    assert!(fleet.graph.wait_for(&id, "accept", WAIT).await.is_some());
    assert!(call.wait_until(WAIT, |r| r.packets_received > 0).await);
    call
}

async fn post_to(fleet: &FleetStack, n: usize, body: String) -> (u16, String) {
    let reply = post_webhook(fleet.http(), &fleet.replicas[n].url, APP_SECRET, body)
        .await
        .expect("webhook POST");
    (reply.status, reply.body)
}

async fn health_of(fleet: &FleetStack, n: usize) -> Value {
    fleet
        .http()
        .get(format!("{}/health", fleet.replicas[n].url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("JSON")
}

async fn metric(replica: &Bridge, name: &str, labels: &[(&str, &str)]) -> f64 {
    replica
        .metrics()
        .await
        .map_or(f64::NAN, |m| m.value(name, labels))
}

/// Waits until `condition` holds (checked every 20 ms), up to `timeout`; whether it did.
async fn eventually<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut check = tokio::time::interval(Duration::from_millis(20));
    loop {
        check.tick().await;
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

fn count(actions: &[sim::graph_double::RecordedAction], action: &str) -> usize {
    actions.iter().filter(|a| a.action == action).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_reaching_another_replica_ends_the_call_on_its_owner_without_a_terminate_of_its_own()
 {
    let fleet = fleet(2).await;
    let call = answered_on(&fleet, 0, "fleet-term", 1).await;
    let sent = Instant::now();
    let (status, _) = post_to(&fleet, 1, terminate_body(&call.call_id, &call.user)).await;
    assert_eq!(status, 200);
    let owner = &fleet.replicas[0];
    assert!(
        eventually(Duration::from_secs(1), || async {
            metric(
                owner,
                "whatsapp_bridge_calls_total",
                &[("outcome", "remote_terminated")],
            )
            .await
                == 1.0
        })
        .await,
        "the owner ended the call within 1 s"
    );
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(owner.wait_idle(WAIT).await);
    // Meta ended the call: the bridge tells it nothing.
    assert_eq!(
        count(&fleet.graph.actions_for(&call.call_id), "terminate"),
        0
    );
    let forwarded = [("kind", "terminated")];
    assert_eq!(
        metric(
            &fleet.replicas[1],
            "whatsapp_bridge_forwarded_events_total",
            &[forwarded[0], ("outcome", "sent")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            owner,
            "whatsapp_bridge_forwarded_events_total",
            &[forwarded[0], ("outcome", "received")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(owner, "whatsapp_bridge_forward_latency_seconds_count", &[]).await,
        1.0
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_redelivered_to_another_replica_stays_one_call_and_one_caller_is_one_call() {
    let fleet = fleet(2).await;
    let call = answered_on(&fleet, 0, "fleet-dup", 2).await;
    // Meta redelivers the same connect to the other replica: a duplicate, answered 200.
    let (status, body) = post_to(
        &fleet,
        1,
        connect_body(&call.call_id, &call.user, &loopback_offer()),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    // The same caller dials again through the other replica: refused, caller_busy.
    let again = PhoneCall::dial(
        fleet.phone_settings(1),
        call_id("fleet-dup2"),
        call.user.clone(),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(again.reply.status, 200);
    assert_eq!(again.reply.refusal().as_deref(), Some("caller_busy"));
    assert!(
        fleet
            .graph
            .wait_for(&again.call_id, "reject", WAIT)
            .await
            .is_some()
    );
    let actions = fleet.graph.actions_for(&call.call_id);
    assert_eq!(
        (count(&actions, "pre_accept"), count(&actions, "accept")),
        (1, 1)
    );
    // The fleet sees one call; each replica reports the fleet beside itself.
    assert!(
        eventually(WAIT, || async {
            health_of(&fleet, 1).await["cluster"]["active_calls"] == 1
        })
        .await
    );
    let health = health_of(&fleet, 1).await;
    assert_eq!(health["active_calls"], 0);
    assert_eq!(health["cluster"]["replicas"], 2);
    assert_eq!(health["cluster"]["redis"], "ok");
    // The admin API of either replica lists the call, and ends it where it runs.
    let listed: Value = fleet
        .http()
        .get(format!("{}/calls", fleet.replicas[1].url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["calls"][0]["id"], call.call_id.as_str());
    assert_eq!(listed["calls"][0]["replica"], fleet.names[0]);
    let ended = fleet
        .http()
        .delete(format!("{}/calls/{}", fleet.replicas[1].url, call.call_id))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("hang up");
    assert_eq!(ended.status(), 202);
    assert!(fleet.replicas[0].wait_idle(WAIT).await);
    // This time the bridge ended it, so Meta is told.
    assert!(
        fleet
            .graph
            .wait_for(&call.call_id, "terminate", WAIT)
            .await
            .is_some()
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_placed_by_one_replica_connects_when_its_answer_reaches_another() {
    let fleet = fleet_on(
        2,
        redis_url(),
        AiMode::Tone {
            hz: 440.0,
            duration: Duration::from_millis(800),
        },
    )
    .await;
    let to = user(3);
    let placed = fleet
        .http()
        .post(format!("{}/calls", fleet.replicas[0].url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"to": to.as_str(), "purpose": "Call the user back about their order."}))
        .send()
        .await
        .expect("POST /calls");
    assert_eq!(placed.status(), 202);
    let placed: Value = placed.json().await.expect("JSON");
    let id = bridge::ids::CallId::new(placed["id"].as_str().expect("id"));
    let connect = fleet
        .graph
        .wait_for(&id, "connect", WAIT)
        .await
        .expect("connect");
    let offer = connect.sdp.expect("offer");
    // Meta's answer, RINGING and ACCEPTED all reach the other replica.
    let call = PhoneCall::pick_up(fleet.phone_settings(1), id.clone(), to, &offer)
        .await
        .expect("picked up");
    assert!(
        call.wait_until(WAIT, |r| {
            r.received.len() > 12_000
                && testkit::audio::dominant_frequency(
                    &r.received[r.received.len() - 4_800..],
                    SAMPLE_RATE,
                    &[440.0, 880.0],
                ) == Some(440.0)
        })
        .await,
        "the AI's opening reached the callee"
    );
    assert!(
        metric(
            &fleet.replicas[1],
            "whatsapp_bridge_forwarded_events_total",
            &[("kind", "answer")]
        )
        .await
            >= 1.0
    );
    call.hang_up().await.expect("hang up");
    assert!(fleet.replicas[0].wait_idle(WAIT).await);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_leaves_nothing_stuck() {
    let mut fleet = fleet(2).await;
    let call = answered_on(&fleet, 0, "fleet-kill", 4).await;
    fleet.replicas[0].kill().await;
    // Meta's later webhooks for its call are answered 200 and counted.
    let (status, _) = post_to(&fleet, 1, terminate_body(&call.call_id, &call.user)).await;
    assert_eq!(status, 200);
    assert!(
        metric(
            &fleet.replicas[1],
            "whatsapp_bridge_forwarded_events_total",
            &[("kind", "terminated")]
        )
        .await
            >= 1.0
    );
    // The dead replica drops out of the fleet's reports, and its claims go stale with its
    // report: the same caller is answered by the replica that lives.
    assert!(
        eventually(Duration::from_secs(15), || async {
            health_of(&fleet, 1).await["cluster"]["replicas"] == 1
        })
        .await
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0;
    let again = loop {
        // Until the dead replica's report has expired, each attempt is refused as busy.
        retry.tick().await;
        n += 1;
        let attempt = PhoneCall::dial(
            fleet.phone_settings(1),
            call_id(&format!("fleet-kill-again{n}")),
            call.user.clone(),
            "Caller",
        )
        .await
        .expect("dial");
        if attempt.reply.refusal().is_none() {
            break attempt;
        }
        assert_eq!(attempt.reply.refusal().as_deref(), Some("caller_busy"));
        assert!(
            Instant::now() < deadline,
            "the dead replica's claim never expired"
        );
    };
    assert!(
        fleet
            .graph
            .wait_for(&again.call_id, "accept", WAIT)
            .await
            .is_some()
    );
    again.hang_up().await.expect("hang up");
    assert!(fleet.replicas[1].wait_idle(WAIT).await);
    fleet.stop().await;
}

/// A `redis-server` of this test's own, on a free port.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (Debian's redis-server package)");
        let redis = PrivateRedis {
            port,
            child: Some(child),
        };
        assert!(
            eventually(WAIT, || ping(port)).await,
            "redis-server answers"
        );
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// Whether a Redis answers `PING` on `port`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_mid_call_calls_go_on_and_coordination_resumes_after_its_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut redis = PrivateRedis::start(port).await;
    let fleet = fleet_on(2, redis.url(), AiMode::Echo).await;
    let call = answered_on(&fleet, 0, "fleet-outage", 5).await;

    redis.kill().await;
    // The owner notices at its next heartbeat; the call's media never stops.
    assert!(
        eventually(Duration::from_secs(10), || async {
            health_of(&fleet, 0).await["cluster"]["redis"] == "degraded"
        })
        .await
    );
    assert_eq!(
        metric(&fleet.replicas[0], "whatsapp_bridge_fleet_degraded", &[]).await,
        1.0
    );
    let received = call.recording().lock().packets_received;
    assert!(
        call.wait_until(WAIT, |r| r.packets_received >= received + 50)
            .await,
        "audio kept flowing with Redis down"
    );
    // A new call is admitted on what the replica knows.
    let during = answered_on(&fleet, 1, "fleet-outage2", 6).await;

    let _redis = PrivateRedis::start(port).await;
    // Redis restarted empty: each replica writes its claims again at its next heartbeat, and
    // the fleet counts both calls again.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let health = health_of(&fleet, 1).await;
            health["cluster"]["redis"] == "ok" && health["cluster"]["active_calls"] == 2
        })
        .await,
        "coordination resumed"
    );
    // Coordination works again: a redelivery is a duplicate, a terminate through the other
    // replica ends the call on its owner.
    let (status, _) = post_to(
        &fleet,
        1,
        connect_body(&call.call_id, &call.user, &loopback_offer()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_to(&fleet, 1, terminate_body(&call.call_id, &call.user)).await;
    assert_eq!(status, 200);
    assert!(fleet.replicas[0].wait_idle(WAIT).await);
    assert_eq!(
        count(&fleet.graph.actions_for(&call.call_id), "pre_accept"),
        1
    );
    during.hang_up().await.expect("hang up");
    assert!(fleet.replicas[1].wait_idle(WAIT).await);
    fleet.stop().await;
}
