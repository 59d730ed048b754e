//! Memory across calls: what the AI is told at the start of a call about this caller's recent
//! conversations, open tasks and pending reminders, read from the store and bounded in size.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::PhoneNumber;
use crate::store::{ReminderStatus, Role, Store, TaskStatus};

/// The most the summary adds to the instructions, in characters.
pub const MAX_MEMORY_CHARS: usize = 2_500;
/// Longest single turn quoted.
const MAX_TURN_CHARS: usize = 240;
/// Tasks and reminders listed at most.
const MAX_ITEMS: usize = 10;

#[derive(Clone, Debug)]
pub struct MemorySettings {
    /// How many recent turns (`MEMORY_TURNS`, default 10).
    pub turns: usize,
    /// How far back (`MEMORY_DAYS`, default 7).
    pub days: u32,
    /// The store gets this long before the call goes on without memory.
    pub timeout: Duration,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            turns: 10,
            days: 7,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The caller's memory as text for the instructions; empty when there is nothing (or the store
/// did not answer in time: a call never waits long for its memory).
pub async fn recall(
    store: &dyn Store,
    phone: &PhoneNumber,
    settings: &MemorySettings,
    now: DateTime<Utc>,
) -> String {
    let since = now - chrono::Duration::days(i64::from(settings.days));
    let gather = async {
        tokio::join!(
            store.recent_turns(phone, since, settings.turns),
            store.list_tasks(phone, Some(TaskStatus::Open)),
            store.list_reminders(phone, Some(ReminderStatus::Pending)),
        )
    };
    let Ok((turns, tasks, reminders)) = tokio::time::timeout(settings.timeout, gather).await else {
        tracing::warn!("the store did not answer in time; the call starts without memory");
        return String::new();
    };
    let mut sections = Vec::new();
    if let Ok(turns) = turns
        && !turns.is_empty()
    {
        let mut lines = vec!["Recent conversation with this caller (oldest first):".to_owned()];
        for turn in turns {
            let who = match turn.role {
                Role::User => "Caller",
                Role::Assistant => "You",
            };
            lines.push(format!(
                "- [{}] {who}: {}",
                turn.at.format("%Y-%m-%d %H:%M UTC"),
                clip(&turn.text, MAX_TURN_CHARS)
            ));
        }
        sections.push(lines.join("\n"));
    }
    if let Ok(tasks) = tasks
        && !tasks.is_empty()
    {
        let mut lines = vec!["The caller's open tasks:".to_owned()];
        for task in tasks.iter().take(MAX_ITEMS) {
            let due = task
                .due_at
                .map(|due| format!(", due {}", due.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default();
            lines.push(format!(
                "- {}{due} (task_id {})",
                clip(&task.title, MAX_TURN_CHARS),
                task.id
            ));
        }
        sections.push(lines.join("\n"));
    }
    if let Ok(reminders) = reminders
        && !reminders.is_empty()
    {
        let mut lines = vec!["The caller's pending reminders:".to_owned()];
        for reminder in reminders.iter().take(MAX_ITEMS) {
            lines.push(format!(
                "- {} at {} (reminder_id {})",
                clip(&reminder.text, MAX_TURN_CHARS),
                reminder.remind_at.format("%Y-%m-%d %H:%M UTC"),
                reminder.id
            ));
        }
        sections.push(lines.join("\n"));
    }
    if sections.is_empty() {
        return String::new();
    }
    clip(
        &format!(
            "What you remember about this caller from earlier calls (use it when it helps):\n{}",
            sections.join("\n")
        ),
        MAX_MEMORY_CHARS,
    )
}

/// At most `max` characters, cut at a character boundary with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clipping_respects_characters_and_the_bound() {
        assert_eq!(clip("short", 10), "short");
        let clipped = clip("ééééééé", 4);
        assert_eq!(clipped.chars().count(), 4);
        assert!(clipped.ends_with('…'));
    }
}
