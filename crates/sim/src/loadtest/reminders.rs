//! `loadtest --reminders N`: N reminders come due at once on a fleet of `--replicas` bridge
//! processes sharing one store (an embedded database file) and a Redis; every user answers,
//! hears the reminder and stays on until it counts as delivered. Measures the delay after the
//! due time and checks that each reminder was delivered by exactly one call.
//!
//! Meta allows 5 permission reads a second per business number (the Graph double enforces it,
//! as it does every other rule), and the bridge reads the permission before every call, so N
//! reminders take at least N / 5 seconds however fast the bridge is.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::config;
use bridge::ids::PhoneNumber;
use bridge::store::embedded::EmbeddedStore;
use bridge::store::{DeliveryChannel, ReminderStatus, Store};
use chrono::Utc;

use super::LoadtestOptions;
use crate::callee::Callee;
use crate::fleet::{FleetOptions, FleetStack};
use crate::realtime_ai::{AiDoubleConfig, AiMode};

/// How far ahead the reminders are set (the fleet is up and polling by then).
const DUE_IN: chrono::Duration = chrono::Duration::seconds(3);
/// A user waits this long for the bridge's call, and then for the reminder to count.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The AI double's opening: a short tone.
const TONE: AiMode = AiMode::Tone {
    hz: 440.0,
    duration: Duration::from_millis(600),
};

/// What one user saw.
struct Delivery {
    /// From the due time to the reminder counting as delivered.
    delay_ms: i64,
    heard_by_call: bool,
}

pub async fn run(options: &LoadtestOptions, reminders: usize) -> anyhow::Result<ExitCode> {
    let data_dir = std::env::temp_dir().join(format!("wvb-reminders-{}", uuid::Uuid::new_v4()));
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&data_dir)
            .map_err(|err| anyhow::anyhow!("opening the store: {err}"))?,
    );
    let concurrency = options.reminder_concurrency;
    println!(
        "{reminders} reminders due at once on {} replica(s) sharing one store and the Redis at {}; \
         each replica delivers {concurrency} at a time.",
        options.replicas, options.redis_url
    );
    let fleet = FleetStack::start(FleetOptions {
        replicas: options.replicas,
        max_calls: concurrency.max(1) * 2,
        redis_url: options.redis_url.clone(),
        exe: None,
        ai: AiDoubleConfig {
            mode: TONE,
            ..AiDoubleConfig::default()
        },
        admin_token: None,
        log_dir: options.out.join("reminder-logs"),
        settings: vec![
            (config::DATA_DIR.into(), data_dir.display().to_string()),
            (config::REMINDER_POLL_INTERVAL.into(), "200ms".into()),
            (config::REMINDER_CONCURRENCY.into(), concurrency.to_string()),
            // A call that goes wrong is retried within the run rather than minutes later.
            (config::REMINDER_RETRY_DELAY.into(), "2s".into()),
            // A line per call and reminder: what to read when a run fails.
            ("RUST_LOG".into(), "info".into()),
        ],
    })
    .await?;
    let callee = Callee::start(&fleet.graph, fleet.ingress_phone_settings());
    let due = Utc::now() + DUE_IN;
    let users: Vec<PhoneNumber> = (0..reminders)
        .map(|n| PhoneNumber::new(format!("4477009{:05}", 60_000 + n)))
        .collect();
    for user in &users {
        store
            .add_reminder(user, "the weekly check-in", due)
            .await
            .map_err(|err| anyhow::anyhow!("adding a reminder: {err}"))?;
    }
    let started = Instant::now();
    let deliveries = answer_all(&callee, &store, reminders).await;
    let elapsed = started.elapsed();
    let connects = connects_per_user(&fleet);
    let reads = fleet.graph.permission_reads();
    let rate_limited = reads.iter().filter(|read| read.status == 429).count();
    let mut lost = 0;
    for user in &users {
        let delivered = store
            .list_reminders(user, Some(ReminderStatus::Delivered))
            .await
            .unwrap_or_default();
        if !delivered
            .iter()
            .any(|r| r.delivered_via == Some(DeliveryChannel::Call))
        {
            lost += 1;
        }
    }
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let duplicates: usize = connects.values().map(|n| n.saturating_sub(1)).sum();
    report(&deliveries, reminders, lost, duplicates, elapsed);
    println!(
        "permission reads: {} ({} refused with 613 and retried)",
        reads.len(),
        rate_limited
    );
    write_csv(&options.out, &deliveries)?;
    if lost == 0 && duplicates == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let logs = options.out.join("reminder-logs");
    eprintln!(
        "not delivered exactly once; the replicas' logs are in {}",
        logs.display()
    );
    for entry in std::fs::read_dir(&logs)?.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- the end of {}:", entry.path().display());
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
    Ok(ExitCode::FAILURE)
}

/// Answers every call the bridge places; each user stays on until the reminder counts.
async fn answer_all(callee: &Callee, store: &Arc<dyn Store>, count: usize) -> Vec<Delivery> {
    let mut phones = tokio::task::JoinSet::new();
    for _ in 0..count {
        let Some(answered) = callee.next_answered(STEP_TIMEOUT).await else {
            break;
        };
        let store = store.clone();
        phones.spawn(async move {
            let heard = answered
                .call
                .wait_until(STEP_TIMEOUT, |r| r.packets_received > 0)
                .await;
            let delivered = wait_delivered(&*store, &answered.user).await;
            let _ = answered.call.hang_up().await;
            delivered.map(|delay_ms| Delivery {
                delay_ms,
                heard_by_call: heard,
            })
        });
    }
    let mut deliveries = Vec::new();
    while let Some(joined) = phones.join_next().await {
        if let Ok(Some(delivery)) = joined {
            deliveries.push(delivery);
        }
    }
    deliveries
}

/// The delay of the user's reminder once it is delivered (bounded wait).
async fn wait_delivered(store: &dyn Store, user: &PhoneNumber) -> Option<i64> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
        let Ok(reminders) = store
            .list_reminders(user, Some(ReminderStatus::Delivered))
            .await
        else {
            continue;
        };
        if let Some(reminder) = reminders.first() {
            let delivered_at = reminder.attempt_log.last()?.at;
            return Some((delivered_at - reminder.remind_at).num_milliseconds());
        }
    }
    None
}

fn connects_per_user(fleet: &FleetStack) -> HashMap<String, usize> {
    let mut per_user = HashMap::new();
    for action in fleet.graph.actions() {
        if action.action == "connect" && action.status == 200 {
            let to = action.body["to"].as_str().unwrap_or_default().to_owned();
            *per_user.entry(to).or_insert(0) += 1;
        }
    }
    per_user
}

fn report(
    deliveries: &[Delivery],
    count: usize,
    lost: usize,
    duplicates: usize,
    elapsed: Duration,
) {
    let mut delays: Vec<i64> = deliveries.iter().map(|d| d.delay_ms).collect();
    delays.sort_unstable();
    let at = |q: f64| {
        delays
            .get(((delays.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    let heard = deliveries.iter().filter(|d| d.heard_by_call).count();
    println!();
    println!(
        "{:>9} {:>9} {:>11} {:>10} {:>12} {:>12} {:>12} {:>9}",
        "reminders",
        "delivered",
        "duplicates",
        "lost",
        "delay p50",
        "delay p99",
        "delay max",
        "total"
    );
    println!(
        "{:>9} {:>9} {:>11} {:>10} {:>9} ms {:>9} ms {:>9} ms {:>7.1} s",
        count,
        deliveries.len(),
        duplicates,
        lost,
        at(0.5),
        at(0.99),
        delays.last().copied().unwrap_or(0),
        elapsed.as_secs_f64()
    );
    println!("calls that carried audio to the user: {heard}");
}

fn write_csv(out: &Path, deliveries: &[Delivery]) -> anyhow::Result<()> {
    let mut text = String::from("delay_ms\n");
    for delivery in deliveries {
        text.push_str(&format!("{}\n", delivery.delay_ms));
    }
    std::fs::write(out.join("reminder_delays.csv"), text)?;
    Ok(())
}
