//! The retention purge: transcript turns and call-log rows older than `TRANSCRIPT_RETENTION` are
//! deleted on a schedule (soon after start, then hourly), in bounded rounds so that a large
//! backlog never holds the store for long. Every replica runs its own: a row is deleted once,
//! by whichever replica gets there first, and each counts what it deleted, so several replicas
//! cost a few empty rounds and nothing else. Tasks, reminders and caller profiles are the
//! caller's own and are never purged (only "forget me" deletes them).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{Purged, Store, StoreError};

/// The first run comes this long after start (not at once: a fleet restarting together should
/// not purge while it takes its first calls).
pub const FIRST_RUN_DELAY: Duration = Duration::from_secs(60);
/// Then one run every hour.
pub const RUN_INTERVAL: Duration = Duration::from_secs(3600);

/// How much one run may delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeBounds {
    /// Rows of each table per round: one short statement each on the store.
    pub round_limit: usize,
    /// Rounds per run; what is left waits for the next run, so a first purge of a large backlog
    /// spreads over hours instead of holding the store.
    pub max_rounds: usize,
}

impl Default for PurgeBounds {
    fn default() -> Self {
        Self {
            round_limit: 500,
            max_rounds: 20,
        }
    }
}

/// One replica's purge.
pub struct RetentionPurge {
    store: Arc<dyn Store>,
    /// Rows older than this are deleted.
    retention: Duration,
    bounds: PurgeBounds,
    metrics: Metrics,
}

impl RetentionPurge {
    pub fn new(
        store: Arc<dyn Store>,
        retention: Duration,
        bounds: PurgeBounds,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            retention,
            bounds,
            metrics,
        }
    }

    /// Runs `first_run_after` (in service: [`FIRST_RUN_DELAY`]), then every [`RUN_INTERVAL`],
    /// until `stop`.
    pub async fn run(self, first_run_after: Duration, stop: CancellationToken) {
        let mut wait = first_run_after;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            // A failure is logged and counted in `run_once`; the next run tries again.
            let _ = self.run_once(Utc::now()).await;
            wait = RUN_INTERVAL;
        }
    }

    /// One run at `now`: rounds until one deletes fewer rows than the limit of both tables, or
    /// the bounds' rounds are used up. What it deleted (also when a round failed: the rounds
    /// before it stay done).
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Purged, StoreError> {
        let cutoff =
            now - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let limit = self.bounds.round_limit as u64;
        let mut total = Purged::default();
        let mut rounds = 0;
        let mut outcome = Ok(());
        while rounds < self.bounds.max_rounds {
            rounds += 1;
            let round = match self
                .store
                .purge_before(cutoff, self.bounds.round_limit)
                .await
            {
                Ok(round) => round,
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            };
            self.count(round);
            total.transcript_turns += round.transcript_turns;
            total.calls += round.calls;
            if round.transcript_turns < limit && round.calls < limit {
                break;
            }
            // Let the calls' writes in between rounds.
            tokio::task::yield_now().await;
        }
        let rounds_used_up = rounds == self.bounds.max_rounds;
        match outcome {
            Err(err) => {
                warn!(%err, transcript_turns = total.transcript_turns, calls = total.calls, "retention purge failed; the next run tries again");
                self.metrics
                    .store_errors
                    .with_label_values(&["purge_before"])
                    .inc();
                Err(err)
            }
            Ok(()) if total == Purged::default() => {
                debug!("retention purge: nothing older than the retention");
                Ok(total)
            }
            Ok(()) => {
                info!(
                    transcript_turns = total.transcript_turns,
                    calls = total.calls,
                    rounds,
                    more_left = rounds_used_up,
                    "retention purge deleted old transcripts and call logs"
                );
                Ok(total)
            }
        }
    }

    fn count(&self, round: Purged) {
        let purged = &self.metrics.retention_purged_rows;
        purged
            .with_label_values(&["transcript_turns"])
            .inc_by(round.transcript_turns);
        purged.with_label_values(&["calls"]).inc_by(round.calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CallId, PhoneNumber};
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{CallLogDirection, CallOutcome, CallRecord, Role, TranscriptTurn};

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A finished call started at `at` with `turns` turns said then.
    async fn call(store: &dyn Store, id: &str, at: DateTime<Utc>, turns: u32) -> CallId {
        let id = CallId::new(id);
        let phone = PhoneNumber::new("447700900123");
        store
            .start_call(&CallRecord::started(
                id.clone(),
                Some(phone),
                CallLogDirection::Inbound,
                at,
            ))
            .await
            .unwrap();
        let turns: Vec<_> = (0..turns)
            .map(|seq| TranscriptTurn {
                call_id: id.clone(),
                seq,
                role: Role::User,
                text: format!("turn {seq}"),
                at,
            })
            .collect();
        store.append_turns(&turns).await.unwrap();
        store
            .finish_call(
                &id,
                &CallOutcome {
                    answered_at: Some(at),
                    ended_at: at,
                    duration_seconds: 0,
                    end_reason: "remote_terminated".into(),
                },
            )
            .await
            .unwrap();
        id
    }

    fn purged(metrics: &Metrics, table: &str) -> u64 {
        metrics
            .retention_purged_rows
            .with_label_values(&[table])
            .get()
    }

    #[tokio::test]
    async fn a_run_purges_in_bounded_rounds_counts_the_rows_and_leaves_the_rest_for_the_next() {
        let dir =
            TempDir(std::env::temp_dir().join(format!("wvb-retention-{}", uuid::Uuid::new_v4())));
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.0).expect("open"));
        let now = Utc::now();
        let days = chrono::Duration::days;
        let old = call(&*store, "wacid.OLD", now - days(40), 5).await;
        let recent = call(&*store, "wacid.RECENT", now - days(10), 2).await;
        let metrics = Metrics::new();
        let purge = RetentionPurge::new(
            store.clone(),
            Duration::from_secs(30 * 86_400),
            PurgeBounds {
                round_limit: 2,
                max_rounds: 2,
            },
            metrics.clone(),
        );

        // Two full rounds: four of the five old turns; the old call keeps its last turn.
        let first = purge.run_once(now).await.unwrap();
        assert_eq!(
            first,
            Purged {
                transcript_turns: 4,
                calls: 0
            }
        );
        assert_eq!(store.call_turns(&old).await.unwrap().len(), 1);
        // The next run finishes: the last turn, then the call.
        let second = purge.run_once(now).await.unwrap();
        assert_eq!(
            second,
            Purged {
                transcript_turns: 1,
                calls: 1
            }
        );
        assert_eq!(store.call(&old).await.unwrap(), None);
        assert_eq!(purge.run_once(now).await.unwrap(), Purged::default());
        assert_eq!(purged(&metrics, "transcript_turns"), 5);
        assert_eq!(purged(&metrics, "calls"), 1);
        let text = metrics.render();
        assert!(
            text.contains(
                "whatsapp_bridge_retention_purged_rows_total{table=\"transcript_turns\"} 5"
            ),
            "{text}"
        );
        // Newer than the retention: kept.
        assert!(store.call(&recent).await.unwrap().is_some());
        assert_eq!(store.call_turns(&recent).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_store_that_fails_is_counted_and_the_scheduled_run_goes_on() {
        let dir =
            TempDir(std::env::temp_dir().join(format!("wvb-retention-{}", uuid::Uuid::new_v4())));
        let embedded = EmbeddedStore::open(&dir.0).expect("open");
        let now = Utc::now();
        call(&embedded, "wacid.OLD", now - chrono::Duration::days(40), 1).await;
        embedded.set_read_only(true).unwrap();
        let store: Arc<dyn Store> = Arc::new(embedded.clone());
        let metrics = Metrics::new();
        let purge = RetentionPurge::new(
            store.clone(),
            Duration::from_secs(30 * 86_400),
            PurgeBounds::default(),
            metrics.clone(),
        );
        assert!(purge.run_once(now).await.is_err());
        assert_eq!(
            metrics
                .store_errors
                .with_label_values(&["purge_before"])
                .get(),
            1
        );
        assert_eq!(purged(&metrics, "transcript_turns"), 0);

        // Scheduled: the run comes on its own once its first delay has passed.
        embedded.set_read_only(false).unwrap();
        let stop = CancellationToken::new();
        let running = tokio::spawn(purge.run(Duration::ZERO, stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while purged(&metrics, "calls") == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no scheduled run");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(purged(&metrics, "transcript_turns"), 1);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the purge stops when told")
            .unwrap();
    }
}
