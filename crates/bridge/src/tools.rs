//! The functions the AI may call (realtime spec §8) and their dispatch to the [`Store`].
//!
//! The caller's phone number always comes from the call, never from the model: no tool takes a
//! number, unknown arguments are refused, and an id belonging to another caller is "not found".

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ids::PhoneNumber;
use crate::store::{NewTask, Reminder, ReminderStatus, Store, StoreError, Task, TaskStatus};

/// How a tool call went, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    Ok,
    /// The model's arguments were not usable (bad JSON, missing field, past time...).
    InvalidArguments,
    NotFound,
    StoreError,
    Timeout,
    UnknownTool,
    /// The call has no caller number (hidden), so there is nobody to act for.
    NoCaller,
}

impl ToolOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::InvalidArguments => "invalid_arguments",
            Self::NotFound => "not_found",
            Self::StoreError => "store_error",
            Self::Timeout => "timeout",
            Self::UnknownTool => "unknown_tool",
            Self::NoCaller => "no_caller",
        }
    }
}

/// What goes back to the model as `function_call_output` (JSON text) and how it went.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    pub output: String,
    pub outcome: ToolOutcome,
}

impl ToolResult {
    fn ok(value: Value) -> Self {
        Self {
            output: value.to_string(),
            outcome: ToolOutcome::Ok,
        }
    }

    pub fn error(outcome: ToolOutcome, message: &str) -> Self {
        Self {
            output: json!({ "error": message }).to_string(),
            outcome,
        }
    }
}

/// Every tool's name.
pub const NAMES: [&str; 6] = [
    "add_task",
    "list_tasks",
    "complete_task",
    "add_reminder",
    "list_reminders",
    "cancel_reminder",
];

/// A bounded metrics label for whatever name the model used.
pub fn metric_label(name: &str) -> &'static str {
    NAMES
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("unknown")
}

/// The tool definitions for `session.update`.
pub fn definitions() -> Vec<Value> {
    let function = |name: &str, description: &str, parameters: Value| json!({ "type": "function", "name": name, "description": description, "parameters": parameters });
    let id = |what: &str| json!({ "type": "string", "description": format!("The {what} id from a previous list or add.") });
    let time = |what: &str| json!({ "type": "string", "description": format!("{what} as ISO 8601 with a UTC offset, e.g. 2026-11-23T15:00:00+00:00; resolve the caller's words (\"tomorrow at 3\") first.") });
    vec![
        function(
            "add_task",
            "Add a task to the caller's own to-do list.",
            json!({ "type": "object", "properties": {
                "title": { "type": "string", "description": "Short title of the task." },
                "notes": { "type": "string", "description": "Optional details." },
                "due": time("When it is due (optional)"),
            }, "required": ["title"], "additionalProperties": false }),
        ),
        function(
            "list_tasks",
            "List the caller's tasks.",
            json!({ "type": "object", "properties": {
                "status": { "type": "string", "enum": ["open", "done", "all"], "description": "Which tasks; default open." },
            }, "additionalProperties": false }),
        ),
        function(
            "complete_task",
            "Mark one of the caller's tasks as done.",
            json!({ "type": "object", "properties": { "task_id": id("task") }, "required": ["task_id"], "additionalProperties": false }),
        ),
        function(
            "add_reminder",
            "Set a reminder: the caller gets a call at that time. Say a short line before calling this.",
            json!({ "type": "object", "properties": {
                "text": { "type": "string", "description": "What to remind the caller of." },
                "remind_at": time("When to call"),
            }, "required": ["text", "remind_at"], "additionalProperties": false }),
        ),
        function(
            "list_reminders",
            "List the caller's reminders.",
            json!({ "type": "object", "properties": {
                "status": { "type": "string", "enum": ["pending", "delivered", "cancelled", "failed", "all"], "description": "Which reminders; default pending." },
            }, "additionalProperties": false }),
        ),
        function(
            "cancel_reminder",
            "Cancel one of the caller's pending reminders.",
            json!({ "type": "object", "properties": { "reminder_id": id("reminder") }, "required": ["reminder_id"], "additionalProperties": false }),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTask {
    title: String,
    notes: Option<String>,
    due: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListFilter {
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskId {
    task_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddReminder {
    text: String,
    remind_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReminderId {
    reminder_id: String,
}

/// Runs one tool call for the caller `phone` (taken from the call) at `now`.
pub async fn dispatch(
    store: &dyn Store,
    phone: Option<&PhoneNumber>,
    name: &str,
    arguments: &str,
    now: DateTime<Utc>,
) -> ToolResult {
    let Some(phone) = phone else {
        return ToolResult::error(
            ToolOutcome::NoCaller,
            "The caller's number is hidden, so tasks and reminders are not available on this call.",
        );
    };
    let arguments = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let result = match name {
        "add_task" => match parse::<AddTask>(arguments) {
            Err(result) => return result,
            Ok(args) => add_task(store, phone, args).await,
        },
        "list_tasks" => match parse::<ListFilter>(arguments) {
            Err(result) => return result,
            Ok(args) => list_tasks(store, phone, args).await,
        },
        "complete_task" => match parse::<TaskId>(arguments) {
            Err(result) => return result,
            Ok(args) => complete_task(store, phone, &args.task_id).await,
        },
        "add_reminder" => match parse::<AddReminder>(arguments) {
            Err(result) => return result,
            Ok(args) => add_reminder(store, phone, args, now).await,
        },
        "list_reminders" => match parse::<ListFilter>(arguments) {
            Err(result) => return result,
            Ok(args) => list_reminders(store, phone, args).await,
        },
        "cancel_reminder" => match parse::<ReminderId>(arguments) {
            Err(result) => return result,
            Ok(args) => cancel_reminder(store, phone, &args.reminder_id).await,
        },
        other => {
            return ToolResult::error(
                ToolOutcome::UnknownTool,
                &format!("There is no tool called {other}."),
            );
        }
    };
    result.unwrap_or_else(|err| {
        tracing::warn!(tool = name, %err, "tool call failed in the store");
        ToolResult::error(
            ToolOutcome::StoreError,
            "The task list is unavailable right now. Apologise and offer to try again later.",
        )
    })
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: &str) -> Result<T, ToolResult> {
    serde_json::from_str(arguments).map_err(|err| {
        ToolResult::error(
            ToolOutcome::InvalidArguments,
            &format!("Invalid arguments: {err}"),
        )
    })
}

/// ISO 8601 with an offset, or without one (then taken as UTC).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .map(|naive| naive.and_utc())
}

fn task_json(task: &Task) -> Value {
    json!({
        "task_id": task.id,
        "title": task.title,
        "notes": task.notes,
        "status": task.status,
        "due": task.due_at.map(|t| t.to_rfc3339()),
        "created": task.created_at.to_rfc3339(),
    })
}

fn reminder_json(reminder: &Reminder) -> Value {
    json!({
        "reminder_id": reminder.id,
        "text": reminder.text,
        "remind_at": reminder.remind_at.to_rfc3339(),
        "status": reminder.status,
    })
}

async fn add_task(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: AddTask,
) -> Result<ToolResult, StoreError> {
    if args.title.trim().is_empty() {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            "The task needs a title.",
        ));
    }
    let due_at = match args.due.as_deref().filter(|d| !d.trim().is_empty()) {
        None => None,
        Some(text) => match parse_time(text) {
            Some(due) => Some(due),
            None => {
                return Ok(ToolResult::error(
                    ToolOutcome::InvalidArguments,
                    &format!("\"{text}\" is not an ISO 8601 time."),
                ));
            }
        },
    };
    let task = store
        .add_task(
            phone,
            NewTask {
                title: args.title.trim().to_owned(),
                notes: args.notes.filter(|n| !n.trim().is_empty()),
                due_at,
            },
        )
        .await?;
    Ok(ToolResult::ok(json!({ "added": task_json(&task) })))
}

async fn list_tasks(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: ListFilter,
) -> Result<ToolResult, StoreError> {
    let status = match args.status.as_deref().unwrap_or("open") {
        "open" => Some(TaskStatus::Open),
        "done" => Some(TaskStatus::Done),
        "all" => None,
        other => {
            return Ok(ToolResult::error(
                ToolOutcome::InvalidArguments,
                &format!("Unknown status {other}; use open, done or all."),
            ));
        }
    };
    let tasks = store.list_tasks(phone, status).await?;
    Ok(ToolResult::ok(
        json!({ "tasks": tasks.iter().map(task_json).collect::<Vec<_>>() }),
    ))
}

async fn complete_task(
    store: &dyn Store,
    phone: &PhoneNumber,
    id: &str,
) -> Result<ToolResult, StoreError> {
    Ok(match store.complete_task(phone, id.trim()).await? {
        Some(task) => ToolResult::ok(json!({ "completed": task_json(&task) })),
        None => ToolResult::error(
            ToolOutcome::NotFound,
            "No task with that id was found for this caller.",
        ),
    })
}

async fn add_reminder(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: AddReminder,
    now: DateTime<Utc>,
) -> Result<ToolResult, StoreError> {
    if args.text.trim().is_empty() {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            "The reminder needs a text.",
        ));
    }
    let Some(remind_at) = parse_time(&args.remind_at) else {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            &format!(
                "\"{}\" is not an ISO 8601 time; ask the caller when exactly.",
                args.remind_at
            ),
        ));
    };
    if remind_at <= now {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            &format!(
                "That time ({}) is in the past (it is now {}); ask the caller for a time in the future.",
                remind_at.to_rfc3339(),
                now.to_rfc3339()
            ),
        ));
    }
    let reminder = store
        .add_reminder(phone, args.text.trim(), remind_at)
        .await?;
    Ok(ToolResult::ok(json!({ "added": reminder_json(&reminder) })))
}

async fn list_reminders(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: ListFilter,
) -> Result<ToolResult, StoreError> {
    let status = match args.status.as_deref().unwrap_or("pending") {
        "pending" => Some(ReminderStatus::Pending),
        "delivered" => Some(ReminderStatus::Delivered),
        "cancelled" => Some(ReminderStatus::Cancelled),
        "failed" => Some(ReminderStatus::Failed),
        "all" => None,
        other => {
            return Ok(ToolResult::error(
                ToolOutcome::InvalidArguments,
                &format!("Unknown status {other}."),
            ));
        }
    };
    let reminders = store.list_reminders(phone, status).await?;
    Ok(ToolResult::ok(
        json!({ "reminders": reminders.iter().map(reminder_json).collect::<Vec<_>>() }),
    ))
}

async fn cancel_reminder(
    store: &dyn Store,
    phone: &PhoneNumber,
    id: &str,
) -> Result<ToolResult, StoreError> {
    Ok(match store.cancel_reminder(phone, id.trim()).await? {
        Some(reminder) => ToolResult::ok(json!({ "cancelled": reminder_json(&reminder) })),
        None => ToolResult::error(
            ToolOutcome::NotFound,
            "No pending reminder with that id was found for this caller.",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_or_without_an_offset() {
        let with = parse_time("2026-11-23T15:00:00+01:00").expect("rfc3339");
        assert_eq!(with.to_rfc3339(), "2026-11-23T14:00:00+00:00");
        let without = parse_time("2026-11-23T15:00").expect("naive");
        assert_eq!(without.to_rfc3339(), "2026-11-23T15:00:00+00:00");
        assert!(parse_time("tomorrow at three").is_none());
    }

    #[test]
    fn every_definition_is_named_in_names() {
        let defined: Vec<String> = definitions()
            .iter()
            .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(defined, NAMES);
        assert_eq!(metric_label("drop_tables"), "unknown");
    }

    #[test]
    fn no_tool_takes_a_phone_number() {
        for tool in definitions() {
            let text = tool["parameters"].to_string();
            assert!(!text.contains("phone"), "{text}");
            assert_eq!(tool["parameters"]["additionalProperties"], false);
        }
    }

    async fn store() -> (crate::store::embedded::EmbeddedStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("wvb-tools-{}", uuid::Uuid::new_v4()));
        (
            crate::store::embedded::EmbeddedStore::open(&dir).expect("store"),
            dir,
        )
    }

    #[tokio::test]
    async fn a_reminder_in_the_past_is_refused_with_a_message_the_ai_can_say() {
        let (store, dir) = store().await;
        let phone = PhoneNumber::new("447700900123");
        let now = Utc::now();
        let past = (now - chrono::Duration::hours(1)).to_rfc3339();
        let result = dispatch(
            &store,
            Some(&phone),
            "add_reminder",
            &json!({"text": "pills", "remind_at": past}).to_string(),
            now,
        )
        .await;
        assert_eq!(result.outcome, ToolOutcome::InvalidArguments);
        assert!(result.output.contains("in the past"), "{}", result.output);
        assert!(store.list_reminders(&phone, None).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn bad_arguments_unknown_tools_and_hidden_callers_get_error_outputs() {
        let (store, dir) = store().await;
        let phone = PhoneNumber::new("447700900123");
        let now = Utc::now();
        let cases = [
            ("add_task", "{not json", ToolOutcome::InvalidArguments),
            ("add_task", r#"{"title":""}"#, ToolOutcome::InvalidArguments),
            (
                "add_task",
                r#"{"title":"x","due":"soon"}"#,
                ToolOutcome::InvalidArguments,
            ),
            (
                "list_tasks",
                r#"{"status":"someday"}"#,
                ToolOutcome::InvalidArguments,
            ),
            (
                "complete_task",
                r#"{"task_id":"00000000-0000-4000-8000-000000000000"}"#,
                ToolOutcome::NotFound,
            ),
            (
                "cancel_reminder",
                r#"{"reminder_id":"x"}"#,
                ToolOutcome::NotFound,
            ),
            ("drop_tables", "{}", ToolOutcome::UnknownTool),
        ];
        for (name, arguments, outcome) in cases {
            let result = dispatch(&store, Some(&phone), name, arguments, now).await;
            assert_eq!(
                result.outcome, outcome,
                "{name} {arguments}: {}",
                result.output
            );
            assert!(result.output.contains("error"));
        }
        let hidden = dispatch(&store, None, "list_tasks", "{}", now).await;
        assert_eq!(hidden.outcome, ToolOutcome::NoCaller);
        let listed = dispatch(&store, Some(&phone), "list_tasks", "", now).await;
        assert_eq!(listed.outcome, ToolOutcome::Ok);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_phone_number_in_the_arguments_is_refused() {
        let result = parse::<TaskId>(r#"{"task_id":"x","phone_number":"447700900123"}"#);
        assert!(matches!(result, Err(r) if r.outcome == ToolOutcome::InvalidArguments));
    }
}
