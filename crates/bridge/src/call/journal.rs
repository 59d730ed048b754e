//! The call log and transcript of one call, written to the store without ever holding up the
//! media path: the call task only pushes into a bounded in-memory queue, and a writer task owned
//! by the journal drains it. When the queue is full the oldest turn is dropped (and counted).
//! A caller who asked to be forgotten is journaled no further ([`Journal::forget`]): the call's
//! row and whatever of it was written go at the end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::ids::CallId;
use crate::metrics::Metrics;
use crate::store::{CallOutcome, CallRecord, Role, Store, TranscriptTurn};

/// Turns waiting for the writer. A store slower than speech for this many turns loses the
/// oldest ones rather than growing without bound.
pub const TURN_QUEUE_CAPACITY: usize = 64;
/// How long the end of a call waits for its last turns and the call-log update.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Store operations of the writer give up after this (the next batch retries nothing: a lost
/// write is logged and counted).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    turns: VecDeque<TranscriptTurn>,
    next_seq: u32,
    /// Set once the call ended: the writer drains what is left, writes the outcome, stops.
    outcome: Option<CallOutcome>,
    /// The caller asked to be forgotten: no more turns, and the call's row is deleted at the end.
    forgotten: bool,
}

/// One call's journal; dropped only after [`Journal::finish`].
pub struct Journal {
    call_id: CallId,
    shared: Arc<Shared>,
    writer: JoinHandle<()>,
    metrics: Metrics,
}

impl Journal {
    /// Starts the writer, whose first job is the call-log row.
    pub fn start(store: Arc<dyn Store>, record: CallRecord, metrics: Metrics) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        let call_id = record.id.clone();
        let writer = tokio::spawn(write(store, record, shared.clone(), metrics.clone()));
        Self {
            call_id,
            shared,
            writer,
            metrics,
        }
    }

    /// Queues a transcript turn; never waits.
    pub fn push(&self, role: Role, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let mut queue = self.shared.queue.lock();
        if queue.outcome.is_some() || queue.forgotten {
            return;
        }
        if queue.turns.len() >= TURN_QUEUE_CAPACITY {
            queue.turns.pop_front();
            self.metrics.transcript_turns_dropped.inc();
        }
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.turns.push_back(TranscriptTurn {
            call_id: self.call_id.clone(),
            seq,
            role,
            text: text.to_owned(),
            at: Utc::now(),
        });
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// The caller asked to be forgotten: queued turns are dropped, later ones are not kept, and
    /// at the end the call's log row and any turn of it already written are deleted instead of
    /// completed (a write in flight now lands before that delete: the writer runs in order).
    pub fn forget(&self) {
        let mut queue = self.shared.queue.lock();
        queue.forgotten = true;
        queue.turns.clear();
    }

    /// Records how the call ended and waits (bounded) for everything to be written.
    pub async fn finish(mut self, outcome: CallOutcome) {
        self.shared.queue.lock().outcome = Some(outcome);
        self.shared.wake.notify_one();
        if tokio::time::timeout(FINISH_TIMEOUT, &mut self.writer)
            .await
            .is_err()
        {
            warn!(call_id = %self.call_id, "call log not written in time; abandoned");
        }
        // Dropping aborts the writer if it is still running.
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // A journal dropped without `finish` (a panicking call task) must not leave its writer.
        self.writer.abort();
    }
}

async fn write(store: Arc<dyn Store>, record: CallRecord, shared: Arc<Shared>, metrics: Metrics) {
    let count_error = |what: &str| {
        metrics.store_errors.with_label_values(&[what]).inc();
    };
    match tokio::time::timeout(WRITE_TIMEOUT, store.start_call(&record)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            warn!(call_id = %record.id, %err, "writing the call log failed");
            count_error("start_call");
        }
        Err(_) => count_error("start_call"),
    }
    loop {
        let (batch, outcome, forgotten) = {
            let mut queue = shared.queue.lock();
            let batch: Vec<TranscriptTurn> = queue.turns.drain(..).collect();
            (batch, queue.outcome.clone(), queue.forgotten)
        };
        if !batch.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, store.append_turns(&batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    warn!(call_id = %record.id, %err, turns = batch.len(), "writing transcript turns failed");
                    count_error("append_turns");
                }
                Err(_) => count_error("append_turns"),
            }
            continue;
        }
        if outcome.is_some() && forgotten {
            match tokio::time::timeout(WRITE_TIMEOUT, store.delete_call(&record.id)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    warn!(call_id = %record.id, %err, "deleting a forgotten caller's call log failed");
                    count_error("delete_call");
                }
                Err(_) => count_error("delete_call"),
            }
            return;
        }
        if let Some(outcome) = outcome {
            match tokio::time::timeout(WRITE_TIMEOUT, store.finish_call(&record.id, &outcome)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    warn!(call_id = %record.id, %err, "completing the call log failed");
                    count_error("finish_call");
                }
                Err(_) => count_error("finish_call"),
            }
            return;
        }
        shared.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PhoneNumber;
    use crate::store::{
        BlockedCaller, CallLogDirection, CallerProfile, Forgotten, NewTask, Purged, Reminder,
        ReminderStatus, ReminderUpdate, StoreError, Task, TaskStatus,
    };

    /// A store whose call-log write never finishes: the writer is stuck, turns pile up.
    struct StuckStore;

    #[async_trait::async_trait]
    impl Store for StuckStore {
        async fn add_task(&self, _: &PhoneNumber, _: NewTask) -> Result<Task, StoreError> {
            unreachable!("not used")
        }
        async fn list_tasks(
            &self,
            _: &PhoneNumber,
            _: Option<TaskStatus>,
        ) -> Result<Vec<Task>, StoreError> {
            Ok(vec![])
        }
        async fn complete_task(
            &self,
            _: &PhoneNumber,
            _: &str,
        ) -> Result<Option<Task>, StoreError> {
            Ok(None)
        }
        async fn add_reminder(
            &self,
            _: &PhoneNumber,
            _: &str,
            _: chrono::DateTime<Utc>,
        ) -> Result<Reminder, StoreError> {
            unreachable!("not used")
        }
        async fn list_reminders(
            &self,
            _: &PhoneNumber,
            _: Option<ReminderStatus>,
        ) -> Result<Vec<Reminder>, StoreError> {
            Ok(vec![])
        }
        async fn cancel_reminder(
            &self,
            _: &PhoneNumber,
            _: &str,
        ) -> Result<Option<Reminder>, StoreError> {
            Ok(None)
        }
        async fn start_call(&self, _: &CallRecord) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn finish_call(&self, _: &CallId, _: &CallOutcome) -> Result<(), StoreError> {
            Ok(())
        }
        async fn call(&self, _: &CallId) -> Result<Option<CallRecord>, StoreError> {
            Ok(None)
        }
        async fn append_turns(&self, _: &[TranscriptTurn]) -> Result<(), StoreError> {
            Ok(())
        }
        async fn call_turns(&self, _: &CallId) -> Result<Vec<TranscriptTurn>, StoreError> {
            Ok(vec![])
        }
        async fn recent_turns(
            &self,
            _: &PhoneNumber,
            _: chrono::DateTime<Utc>,
            _: usize,
        ) -> Result<Vec<TranscriptTurn>, StoreError> {
            Ok(vec![])
        }
        async fn claim_due_reminders(
            &self,
            _: &str,
            _: chrono::DateTime<Utc>,
            _: std::time::Duration,
            _: usize,
        ) -> Result<Vec<Reminder>, StoreError> {
            Ok(vec![])
        }
        async fn extend_reminder_claim(
            &self,
            _: &str,
            _: &str,
            _: chrono::DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn settle_reminder(
            &self,
            _: &str,
            _: &str,
            _: &ReminderUpdate,
        ) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn queue_callback(
            &self,
            _: &PhoneNumber,
            _: &str,
            _: chrono::DateTime<Utc>,
        ) -> Result<Option<Reminder>, StoreError> {
            Ok(None)
        }
        async fn caller_profile(&self, _: &PhoneNumber) -> Result<CallerProfile, StoreError> {
            Ok(CallerProfile::default())
        }
        async fn set_caller_time_zone(&self, _: &PhoneNumber, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn note_caller_message(
            &self,
            _: &PhoneNumber,
            _: chrono::DateTime<Utc>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn purge_before(
            &self,
            _: chrono::DateTime<Utc>,
            _: usize,
        ) -> Result<Purged, StoreError> {
            unreachable!("not used")
        }
        async fn forget_caller(&self, _: &PhoneNumber) -> Result<Forgotten, StoreError> {
            unreachable!("not used")
        }
        async fn delete_call(&self, _: &CallId) -> Result<(), StoreError> {
            unreachable!("not used")
        }
        async fn list_blocked(&self) -> Result<Vec<BlockedCaller>, StoreError> {
            Ok(vec![])
        }
        async fn block_caller(
            &self,
            _: &PhoneNumber,
            _: Option<&str>,
            _: chrono::DateTime<Utc>,
        ) -> Result<BlockedCaller, StoreError> {
            unreachable!("not used")
        }
        async fn unblock_caller(&self, _: &PhoneNumber) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn a_store_that_falls_behind_loses_the_oldest_turns_counted_and_never_blocks() {
        let metrics = Metrics::new();
        let record = CallRecord::started(
            CallId::new("wacid.J"),
            None,
            CallLogDirection::Inbound,
            Utc::now(),
        );
        let journal = Journal::start(Arc::new(StuckStore), record, metrics.clone());
        for n in 0..(TURN_QUEUE_CAPACITY + 6) {
            journal.push(Role::User, &format!("turn {n}"));
        }
        assert_eq!(metrics.transcript_turns_dropped.get(), 6);
        let queue = journal.shared.queue.lock();
        assert_eq!(queue.turns.len(), TURN_QUEUE_CAPACITY);
        assert_eq!(queue.turns.front().map(|t| t.seq), Some(6));
    }

    #[tokio::test]
    async fn a_forgotten_call_keeps_nothing_of_itself_after_the_end() {
        let dir = std::env::temp_dir().join(format!("wvb-journal-{}", uuid::Uuid::new_v4()));
        let store = Arc::new(crate::store::embedded::EmbeddedStore::open(&dir).expect("open"));
        let caller = Some(PhoneNumber::new("447700900123"));
        let start = |id: &str| {
            let record = CallRecord::started(
                CallId::new(id),
                caller.clone(),
                CallLogDirection::Inbound,
                Utc::now(),
            );
            Journal::start(store.clone(), record, Metrics::new())
        };
        let outcome = || CallOutcome {
            answered_at: Some(Utc::now()),
            ended_at: Utc::now(),
            duration_seconds: 3,
            end_reason: "remote_terminated".into(),
        };
        let kept = start("wacid.KEPT");
        kept.push(Role::User, "keep me");
        kept.finish(outcome()).await;

        let journal = start("wacid.FORGET");
        let id = CallId::new("wacid.FORGET");
        journal.push(Role::User, "please forget me");
        journal.push(Role::Assistant, "are you sure?");
        // Written as the call goes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.call_turns(&id).await.unwrap().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "turns never written"
            );
            tokio::task::yield_now().await;
        }
        journal.forget();
        journal.push(Role::User, "yes");
        journal.push(Role::Assistant, "done, all deleted");
        journal.finish(outcome()).await;

        assert_eq!(store.call(&id).await.unwrap(), None);
        assert!(store.call_turns(&id).await.unwrap().is_empty());
        let kept = CallId::new("wacid.KEPT");
        assert!(store.call(&kept).await.unwrap().is_some());
        assert_eq!(store.call_turns(&kept).await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
