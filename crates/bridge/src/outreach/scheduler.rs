//! Delivers due reminders and callbacks, each exactly once across the replicas sharing a store:
//! a reminder is claimed atomically by one replica for a lease (renewed while its delivery
//! runs; a replica that dies gives it back when the lease runs out), delivered, and settled.
//!
//! This replica claims only what it can start now: no more than its free delivery slots and
//! its free call slots, so a reminder's call never waits holding a claim and never pushes out
//! a live call; when the replica is full the scheduler waits for a call to end. A store that
//! cannot be reached delays deliveries (the claim is retried at the next poll); nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Outreach;
use super::delivery;
use crate::store::{Reminder, ReminderSettlement, ReminderUpdate, StoreError};

/// How often a failed settlement is tried again (the claim still holds meanwhile).
const SETTLE_RETRY: Duration = Duration::from_millis(500);
/// At most one warning per this period while the store cannot be reached.
const STORE_WARNING_PERIOD: Duration = Duration::from_secs(30);

/// The reminder scheduler of one replica.
pub struct Scheduler {
    outreach: Outreach,
    /// Who holds the claims this replica makes (the replica's id).
    owner: String,
    deliveries: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Scheduler {
    pub fn new(outreach: Outreach, owner: String) -> Self {
        let concurrency = outreach.settings().concurrency;
        Self {
            outreach,
            owner,
            deliveries: Arc::new(Semaphore::new(concurrency)),
            tracker: TaskTracker::new(),
        }
    }

    /// Runs until `stop` is cancelled, then waits for the deliveries in flight (their calls
    /// end with the drain; a reminder cut off so is retried soon, by any replica).
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.outreach.settings().poll_interval;
        info!(owner = %self.owner, poll_ms = poll.as_millis() as u64, "reminder scheduler started");
        let mut store_down_since: Option<std::time::Instant> = None;
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            let room = self.room();
            let claimed = if room == 0 {
                Vec::new()
            } else {
                match self.claim(room).await {
                    Ok(claimed) => {
                        if let Some(since) = store_down_since.take() {
                            info!(
                                down_ms = since.elapsed().as_millis() as u64,
                                "reminders: the store answers again"
                            );
                        }
                        claimed
                    }
                    Err(err) => {
                        store_down_since.get_or_insert_with(std::time::Instant::now);
                        if last_warning.is_none_or(|at| at.elapsed() >= STORE_WARNING_PERIOD) {
                            warn!(%err, "reminders: due reminders cannot be claimed; retrying");
                            last_warning = Some(std::time::Instant::now());
                        }
                        Vec::new()
                    }
                }
            };
            let full = !claimed.is_empty() && claimed.len() == room;
            for reminder in claimed {
                self.start_delivery(reminder);
            }
            if full {
                // There may be more due: claim again as soon as there is room.
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.wait_for_room() => continue,
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(poll) => {}
                () = self.outreach.inner.wake.notified() => {}
            }
            if self.room() == 0 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.wait_for_room() => {}
                }
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        debug!("reminder scheduler stopped");
    }

    /// Reminders this replica could start delivering now.
    fn room(&self) -> usize {
        let calls = self.outreach.calls().registry().free_slots();
        self.deliveries.available_permits().min(calls)
    }

    /// Until both a delivery slot and a call slot are free.
    async fn wait_for_room(&self) {
        if let Ok(permit) = self.deliveries.clone().acquire_owned().await {
            drop(permit);
        }
        self.outreach.calls().registry().wait_for_room().await;
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Reminder>, StoreError> {
        let settings = self.outreach.settings();
        let claimed = self
            .outreach
            .store()
            .claim_due_reminders(&self.owner, Utc::now(), settings.claim_lease, limit)
            .await;
        if claimed.is_err() {
            self.outreach
                .metrics()
                .store_errors
                .with_label_values(&["claim_reminders"])
                .inc();
        }
        claimed
    }

    fn start_delivery(&self, reminder: Reminder) {
        let Ok(permit) = self.deliveries.clone().try_acquire_owned() else {
            // Cannot happen: no more is claimed than there are permits. Given back by its
            // lease if it ever does.
            warn!(reminder = %reminder.id, "no delivery slot for a claimed reminder");
            return;
        };
        let outreach = self.outreach.clone();
        let owner = self.owner.clone();
        self.tracker.spawn(async move {
            let metrics = outreach.metrics().clone();
            metrics.reminders_in_delivery.inc();
            // First time due (a retry, even one held back before any attempt, has a time).
            if reminder.attempt_log.is_empty() && reminder.next_attempt_at.is_none() {
                metrics
                    .reminders_due
                    .with_label_values(&[reminder.kind.as_str()])
                    .inc();
            }
            let update = {
                let delivery = delivery::deliver(&outreach, &reminder);
                tokio::pin!(delivery);
                keep_claim(&outreach, &owner, &reminder, &mut delivery).await
            };
            settle(&outreach, &owner, &reminder, &update).await;
            metrics.reminders_in_delivery.dec();
            drop(permit);
        });
    }
}

/// Runs the delivery while renewing its claim every third of the lease.
async fn keep_claim(
    outreach: &Outreach,
    owner: &str,
    reminder: &Reminder,
    delivery: &mut std::pin::Pin<&mut impl std::future::Future<Output = ReminderUpdate>>,
) -> ReminderUpdate {
    let lease = outreach.settings().claim_lease;
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            update = delivery.as_mut() => return update,
            _ = renew.tick() => {
                let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
                match outreach.store().extend_reminder_claim(&reminder.id, owner, until).await {
                    Ok(true) => {}
                    Ok(false) => warn!(reminder = %reminder.id, "the claim on a reminder was lost during its delivery"),
                    Err(err) => debug!(reminder = %reminder.id, %err, "the claim could not be renewed"),
                }
            }
        }
    }
}

/// Tells the store how the delivery went, retrying while the claim holds; counts the result.
async fn settle(outreach: &Outreach, owner: &str, reminder: &Reminder, update: &ReminderUpdate) {
    let store = outreach.store();
    let deadline = tokio::time::Instant::now() + outreach.settings().claim_lease;
    let settled = loop {
        match store.settle_reminder(&reminder.id, owner, update).await {
            Ok(settled) => break settled,
            Err(err) if tokio::time::Instant::now() + SETTLE_RETRY < deadline => {
                debug!(reminder = %reminder.id, %err, "settling a reminder failed; retrying");
                tokio::time::sleep(SETTLE_RETRY).await;
            }
            Err(err) => {
                outreach
                    .metrics()
                    .store_errors
                    .with_label_values(&["settle_reminder"])
                    .inc();
                warn!(reminder = %reminder.id, %err, "a reminder's delivery could not be recorded");
                return;
            }
        }
    };
    if !settled {
        warn!(reminder = %reminder.id, "a reminder's claim was taken over before it was settled");
        return;
    }
    let metrics = outreach.metrics();
    let kind = reminder.kind.as_str();
    match &update.settlement {
        ReminderSettlement::Delivered(channel) => {
            let channel = channel.as_str();
            metrics
                .reminders_delivered
                .with_label_values(&[kind, channel])
                .inc();
            let delay = (Utc::now() - reminder.remind_at)
                .to_std()
                .unwrap_or_default();
            metrics
                .reminder_delivery_delay_seconds
                .observe(delay.as_secs_f64());
            info!(reminder = %reminder.id, kind, channel, delay_ms = delay.as_millis() as u64, "reminder delivered");
        }
        ReminderSettlement::Failed { reason } => {
            metrics
                .reminders_failed
                .with_label_values(&[kind, failure_label(reason)])
                .inc();
        }
        ReminderSettlement::Retry { next_attempt_at } => {
            debug!(reminder = %reminder.id, %next_attempt_at, "reminder to be tried again");
        }
    }
}

/// A bounded label for a failure reason.
fn failure_label(reason: &str) -> &'static str {
    if reason == super::delivery::BLOCKED_REASON {
        "blocked"
    } else if reason.contains("no template") {
        "no_message_channel"
    } else {
        "message_failed"
    }
}
