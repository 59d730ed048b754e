//! The fleet against a real Redis (`TEST_REDIS_URL`, default the local one), each test under a
//! prefix of its own.

use std::time::Duration;

use super::*;

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn settings(prefix: &str, replica: &str) -> FleetSettings {
    FleetSettings {
        url: SecretString::from(redis_url()),
        prefix: prefix.to_owned(),
        replica: replica.to_owned(),
    }
}

fn prefix() -> String {
    format!("wvb-test-{}", uuid::Uuid::new_v4().simple())
}

fn replica(prefix: &str, name: &str) -> Fleet {
    Fleet::new(&settings(prefix, name), Metrics::new()).expect("fleet")
}

/// A replica that has reported, so its claims count as alive.
async fn alive(prefix: &str, name: &'static str) -> Fleet {
    let fleet = replica(prefix, name);
    fleet.join(&report(name, 0)).await;
    fleet
}

fn caller(n: u32) -> PhoneNumber {
    PhoneNumber::new(format!("44770090{n:04}"))
}

fn report(name: &'static str, calls: usize) -> ReportFn {
    Arc::new(move || ReplicaReport {
        replica: name.to_owned(),
        active_calls: calls,
        max_calls: 10,
        ..ReplicaReport::default()
    })
}

#[tokio::test]
async fn a_call_is_claimed_once_across_replicas_and_its_id_stays_ended_after_release() {
    let prefix = prefix();
    let (a, b) = (alive(&prefix, "a").await, alive(&prefix, "b").await);
    let call = CallId::new("wacid.FLEET-1");
    assert_eq!(a.claim(&call, Some(&caller(1))).await, Claim::Claimed);
    // Meta redelivers the connect to another replica: a duplicate.
    assert_eq!(b.claim(&call, Some(&caller(1))).await, Claim::Live);
    // The same caller dials again through B: busy.
    let second = CallId::new("wacid.FLEET-2");
    assert_eq!(b.claim(&second, Some(&caller(1))).await, Claim::CallerBusy);
    // A hidden number takes no caller key.
    let hidden = CallId::new("wacid.FLEET-3");
    assert_eq!(b.claim(&hidden, None).await, Claim::Claimed);

    a.release(&call);
    worker::flush(&a).await;
    assert_eq!(b.claim(&call, Some(&caller(1))).await, Claim::Ended);
    assert_eq!(b.claim(&second, Some(&caller(1))).await, Claim::Claimed);
    // A replica releases only what it holds: A's release of B's call changes nothing.
    a.release(&second);
    worker::flush(&a).await;
    assert_eq!(
        a.claim(&CallId::new("wacid.FLEET-4"), Some(&caller(1)))
            .await,
        Claim::CallerBusy
    );
}

#[tokio::test]
async fn an_event_for_a_call_owned_elsewhere_reaches_its_owner() {
    let prefix = prefix();
    let (a, b) = (alive(&prefix, "a").await, alive(&prefix, "b").await);
    let shutdown = CancellationToken::new();
    let (mut inbox, _worker) = a
        .start(&settings(&prefix, "a"), report("a", 1), shutdown.clone())
        .expect("started");
    let call = CallId::new("wacid.FLEET-FWD");
    assert_eq!(a.claim(&call, Some(&caller(2))).await, Claim::Claimed);

    assert_eq!(
        b.route(&call, &FleetEvent::Terminated).await,
        Routed::Forwarded("a".to_owned())
    );
    let forwarded = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("in time")
        .expect("an event");
    assert_eq!(forwarded.call_id, call);
    assert_eq!(forwarded.event, FleetEvent::Terminated);
    assert_eq!(forwarded.from, "b");
    assert_eq!(
        a.inner.metrics.forward_latency_seconds.get_sample_count(),
        1
    );
    // The owner routing its own call's event is told so; an unknown call has no owner.
    assert_eq!(a.route(&call, &FleetEvent::Hangup).await, Routed::Mine);
    assert_eq!(
        b.route(&CallId::new("wacid.NOBODY"), &FleetEvent::Terminated)
            .await,
        Routed::NoOwner
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_answer_that_beats_the_placing_replicas_claim_is_kept_for_it() {
    let prefix = prefix();
    let (a, b) = (alive(&prefix, "a").await, alive(&prefix, "b").await);
    let placement = a.claim_caller(&caller(3)).await.expect("caller free");
    // The caller is busy for everyone while the call is placed.
    assert!(b.claim_caller(&caller(3)).await.is_err());
    let call = CallId::new("wacid.FLEET-BIC");
    let answer = FleetEvent::Answer {
        sdp: "v=0\r\n".to_owned(),
    };
    assert_eq!(b.hold_early(&call, &answer).await, Routed::NoOwner);
    let kept = a.bind(placement, &call).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].event, answer);
    // Bound: the call is A's, the caller's key names the call.
    assert_eq!(b.claim(&call, Some(&caller(3))).await, Claim::Live);
    assert_eq!(
        b.claim(&CallId::new("wacid.OTHER"), Some(&caller(3))).await,
        Claim::CallerBusy
    );
}

#[tokio::test]
async fn an_abandoned_placement_frees_the_caller() {
    let prefix = prefix();
    let a = alive(&prefix, "a").await;
    let placement = a.claim_caller(&caller(4)).await.expect("caller free");
    drop(placement);
    worker::flush(&a).await;
    assert!(a.claim_caller(&caller(4)).await.is_ok());
}

#[tokio::test]
async fn claims_lost_by_redis_are_written_again_at_the_next_heartbeat() {
    let prefix = prefix();
    let (a, b) = (alive(&prefix, "a").await, alive(&prefix, "b").await);
    let call = CallId::new("wacid.FLEET-RESTART");
    assert_eq!(a.claim(&call, Some(&caller(5))).await, Claim::Claimed);
    // Redis restarts without persistence: every key of the fleet is gone.
    let mut conn = a.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("del");
    // A's next heartbeat finds its report gone and writes its claims again.
    worker::heartbeat(&a, &report("a", 1)).await;
    worker::heartbeat(&b, &report("b", 0)).await;
    assert_eq!(b.claim(&call, Some(&caller(5))).await, Claim::Live);
    assert_eq!(
        b.claim(&CallId::new("wacid.Y"), Some(&caller(5))).await,
        Claim::CallerBusy
    );
}

#[tokio::test]
async fn a_dead_replicas_claims_are_stale_once_its_report_is_gone() {
    let prefix = prefix();
    let (a, b) = (alive(&prefix, "a").await, alive(&prefix, "b").await);
    let call = CallId::new("wacid.FLEET-DEAD");
    assert_eq!(a.claim(&call, Some(&caller(8))).await, Claim::Claimed);
    assert_eq!(
        b.route(&call, &FleetEvent::Terminated).await,
        Routed::Forwarded("a".to_owned())
    );
    // A dies: its report expires after OWNER_TIMEOUT (deleted here rather than waited for).
    let _: () = redis::cmd("DEL")
        .arg(a.inner.keys.report("a"))
        .query_async(&mut a.conn())
        .await
        .expect("del");
    assert_eq!(
        b.route(&call, &FleetEvent::Terminated).await,
        Routed::NoOwner
    );
    assert_eq!(
        b.claim(&CallId::new("wacid.FLEET-AGAIN"), Some(&caller(8)))
            .await,
        Claim::Claimed
    );
}

#[tokio::test]
async fn the_heartbeat_reports_every_replica_and_a_stopped_one_leaves() {
    let prefix = prefix();
    let (a, b) = (replica(&prefix, "a"), replica(&prefix, "b"));
    worker::heartbeat(&a, &report("a", 3)).await;
    worker::heartbeat(&b, &report("b", 4)).await;
    let view = b.cluster();
    assert_eq!(
        (view.replicas, view.active_calls, view.max_calls),
        (2, 7, 20)
    );
    assert!(!view.degraded);
    let others = a.other_reports().await.expect("reports");
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].replica, "b");
    worker::leave(&b).await.expect("left");
    assert!(a.other_reports().await.expect("reports").is_empty());
}

#[tokio::test]
async fn without_redis_a_claim_is_unconfirmed_at_once_and_the_fleet_is_degraded() {
    // Nothing listens on port 1.
    let fleet = Fleet::new(
        &FleetSettings {
            url: SecretString::from("redis://127.0.0.1:1".to_owned()),
            prefix: prefix(),
            replica: "lonely".to_owned(),
        },
        Metrics::new(),
    )
    .expect("lazy");
    let started = std::time::Instant::now();
    let call = CallId::new("wacid.NO-REDIS");
    assert_eq!(
        fleet.claim(&call, Some(&caller(7))).await,
        Claim::Unconfirmed
    );
    assert!(started.elapsed() < COMMAND_TIMEOUT * 2);
    assert!(fleet.is_degraded());
    assert_eq!(fleet.inner.metrics.fleet_degraded.get(), 1);
    // The release waits for Redis instead of being lost.
    fleet.release(&call);
    worker::flush(&fleet).await;
    assert_eq!(fleet.inner.pending.lock().releases.len(), 1);
}
