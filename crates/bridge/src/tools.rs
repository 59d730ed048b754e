//! The functions the AI may call (realtime spec §8) and their dispatch to the [`Store`].
//!
//! The caller's phone number always comes from the call, never from the model: no tool takes a
//! number, unknown arguments are refused, and an id belonging to another caller is "not found".

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ids::PhoneNumber;
use crate::local_time::{self, CallerZone};
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
    /// `forget_me` confirmed without being asked first on this call: refused, nothing deleted.
    NotConfirmed,
    /// A limit was reached (the caller's open tasks or pending reminders, the call's tool
    /// calls): nothing was done.
    LimitReached,
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
            Self::NotConfirmed => "not_confirmed",
            Self::LimitReached => "limit_reached",
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

    /// A successful output given as JSON text.
    pub fn ok_text(output: &str) -> Self {
        Self {
            output: output.to_owned(),
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

/// How much one caller may keep in the store (`CALLER_OPEN_TASKS`, `CALLER_PENDING_REMINDERS`);
/// 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToolLimits {
    pub open_tasks: usize,
    pub pending_reminders: usize,
}

/// What the AI is told for every tool call past `TOOL_CALLS_PER_CALL`.
pub fn tool_calls_limit_reached(limit: u32) -> ToolResult {
    ToolResult::error(
        ToolOutcome::LimitReached,
        &format!(
            "This call has used its {limit} tool calls, the most allowed in one call; nothing was done. Tell the caller that tasks and reminders cannot be changed any more on this call and that they can call again."
        ),
    )
}

/// The tool the call task handles itself: the AI ends the call after its goodbye.
pub const END_CALL: &str = "end_call";

/// What the AI is told when it calls [`END_CALL`].
pub const END_CALL_OUTPUT: &str = r#"{"ending":true,"say":"Say goodbye in one short sentence; the call ends when you have finished."}"#;

/// The tool that deletes everything kept about the caller, in two steps: asked, then confirmed
/// (the call task keeps the state, [`ForgetMe`]).
pub const FORGET_ME: &str = "forget_me";

/// Every tool's name.
pub const NAMES: [&str; 9] = [
    "add_task",
    "list_tasks",
    "complete_task",
    "add_reminder",
    "list_reminders",
    "cancel_reminder",
    "set_time_zone",
    FORGET_ME,
    END_CALL,
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
    let time = |what: &str| json!({ "type": "string", "description": format!("{what}, in the caller's local time as YYYY-MM-DDTHH:MM (e.g. 2026-11-23T15:00); resolve the caller's words (\"tomorrow at 3\") with the date and time in your instructions first.") });
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
            "Set a reminder: the business calls the caller at that time (or, if the call cannot reach them, sends a WhatsApp message). Say a short line before calling this.",
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
        function(
            "set_time_zone",
            "Remember the caller's time zone when they say they are somewhere else than their number suggests (or when the zone in your instructions is a guess).",
            json!({ "type": "object", "properties": {
                "time_zone": { "type": "string", "description": "An IANA time zone name, e.g. Europe/Berlin or America/Chicago." },
            }, "required": ["time_zone"], "additionalProperties": false }),
        ),
        function(
            FORGET_ME,
            "Delete everything kept about the caller (their tasks, reminders, call transcripts, call history and profile) when they ask to be forgotten. First call it without confirm: it tells you what would be deleted. Then tell the caller out loud what will be deleted, that it cannot be undone, and ask them to confirm. Only when the caller has clearly said yes, call it again with confirm true. Never confirm on your own or because of anything but the caller's spoken yes.",
            json!({ "type": "object", "properties": {
                "confirm": { "type": "boolean", "description": "true only after the caller said yes to the deletion on this call." },
            }, "additionalProperties": false }),
        ),
        function(
            END_CALL,
            "End the call when the conversation is over (the caller said goodbye or has what they needed). You will then say a short goodbye, and the call ends after it.",
            json!({ "type": "object", "properties": {}, "additionalProperties": false }),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeZoneArg {
    time_zone: String,
}

/// Runs one tool call for the caller `phone` (taken from the call) at `now`.
pub async fn dispatch(
    store: &dyn Store,
    limits: &ToolLimits,
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
    if !NAMES.contains(&name) {
        return ToolResult::error(
            ToolOutcome::UnknownTool,
            &format!("There is no tool called {name}."),
        );
    }
    // Times are read and written in the caller's zone.
    let zone = zone_of(store, phone).await;
    let result = match name {
        "add_task" => match parse::<AddTask>(arguments) {
            Err(result) => return result,
            Ok(args) => add_task(store, limits, phone, args, &zone).await,
        },
        "list_tasks" => match parse::<ListFilter>(arguments) {
            Err(result) => return result,
            Ok(args) => list_tasks(store, phone, args, &zone).await,
        },
        "complete_task" => match parse::<TaskId>(arguments) {
            Err(result) => return result,
            Ok(args) => complete_task(store, phone, &args.task_id, &zone).await,
        },
        "add_reminder" => match parse::<AddReminder>(arguments) {
            Err(result) => return result,
            Ok(args) => add_reminder(store, limits, phone, args, now, &zone).await,
        },
        "list_reminders" => match parse::<ListFilter>(arguments) {
            Err(result) => return result,
            Ok(args) => list_reminders(store, phone, args, &zone).await,
        },
        "cancel_reminder" => match parse::<ReminderId>(arguments) {
            Err(result) => return result,
            Ok(args) => cancel_reminder(store, phone, &args.reminder_id, &zone).await,
        },
        // The call task runs it: it needs the call's own request before a confirmation.
        FORGET_ME => {
            return ToolResult::error(
                ToolOutcome::NotConfirmed,
                "forget_me runs only within a call.",
            );
        }
        // The call task acts on it; here only its output.
        END_CALL => Ok(ToolResult::ok(
            serde_json::from_str(END_CALL_OUTPUT).unwrap_or_default(),
        )),
        "set_time_zone" => match parse::<TimeZoneArg>(arguments) {
            Err(result) => return result,
            Ok(args) => set_time_zone(store, phone, &args.time_zone, now).await,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForgetArgs {
    confirm: Option<bool>,
}

/// One call's "forget me": the AI must ask first (the answer says what would be deleted and
/// that the caller must confirm), and only a confirmation after that request, in the same call,
/// deletes. Kept by the call task, so a request never outlives its call.
#[derive(Debug, Default)]
pub struct ForgetMe {
    requested: bool,
    confirmed: bool,
}

/// What a `forget_me` call leads to.
#[derive(Debug, PartialEq)]
pub enum ForgetStep {
    /// Answer the AI at once with this (the request's summary, or a refusal).
    Answer(ToolResult),
    /// Confirmed: stop keeping anything of this call, delete the caller's data
    /// ([`forget_caller`]), answer with what was deleted.
    Delete,
}

impl ForgetMe {
    /// The AI called `forget_me` with `arguments` on a call whose caller is known (`has_caller`).
    pub fn step(&mut self, arguments: &str, has_caller: bool) -> ForgetStep {
        if !has_caller {
            return ForgetStep::Answer(ToolResult::error(
                ToolOutcome::NoCaller,
                "The caller's number is hidden, so nothing is kept about them on this call.",
            ));
        }
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let args = match parse::<ForgetArgs>(arguments) {
            Ok(args) => args,
            Err(result) => return ForgetStep::Answer(result),
        };
        if args.confirm != Some(true) {
            self.requested = true;
            return ForgetStep::Answer(ToolResult::ok(json!({
                "deleted": false,
                "would_delete": ["tasks", "reminders", "call transcripts", "call history", "profile (time zone)"],
                "say": "Tell the caller that all of this will be deleted for good and cannot be undone, and ask whether they are sure. Only if they clearly say yes, call forget_me again with confirm true.",
            })));
        }
        if !self.requested {
            return ForgetStep::Answer(ToolResult::error(
                ToolOutcome::NotConfirmed,
                "Refused: nothing was deleted. Call forget_me without confirm first, tell the caller what will be deleted and ask them to confirm.",
            ));
        }
        self.confirmed = true;
        ForgetStep::Delete
    }

    /// The caller confirmed on this call: nothing more of it may be kept.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }
}

/// Deletes everything kept about the caller `phone` (from the call, never from the model).
pub async fn forget_caller(store: &dyn Store, phone: &PhoneNumber) -> ToolResult {
    match store.forget_caller(phone).await {
        Ok(deleted) => ToolResult::ok(json!({
            "deleted": true,
            "tasks": deleted.tasks,
            "reminders": deleted.reminders,
            "calls": deleted.calls,
            "say": "Tell the caller everything about them has been deleted, and that nothing of this call is kept either.",
        })),
        Err(err) => {
            tracing::warn!(%err, "forgetting the caller failed in the store");
            ToolResult::error(
                ToolOutcome::StoreError,
                "The deletion failed. Apologise, and tell the caller nothing more of this call is kept and they can ask again later.",
            )
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: &str) -> Result<T, ToolResult> {
    serde_json::from_str(arguments).map_err(|err| {
        ToolResult::error(
            ToolOutcome::InvalidArguments,
            &format!("Invalid arguments: {err}"),
        )
    })
}

/// The caller's zone: the one they stated (stored), else their number's. A store that cannot
/// be read leaves the number's zone.
pub async fn zone_of(store: &dyn Store, phone: &PhoneNumber) -> CallerZone {
    let stated = match store.caller_profile(phone).await {
        Ok(profile) => profile.time_zone,
        Err(err) => {
            tracing::debug!(%err, "caller profile unavailable; zone from the number");
            None
        }
    };
    local_time::caller_zone(Some(phone), stated.as_deref())
}

fn task_json(task: &Task, zone: &CallerZone) -> Value {
    json!({
        "task_id": task.id,
        "title": task.title,
        "notes": task.notes,
        "status": task.status,
        "due": task.due_at.map(|t| zone.format(t)),
        "created": zone.format(task.created_at),
    })
}

fn reminder_json(reminder: &Reminder, zone: &CallerZone) -> Value {
    let mut value = json!({
        "reminder_id": reminder.id,
        "text": reminder.text,
        "remind_at": zone.format(reminder.remind_at),
        "status": reminder.status,
        "call_attempts": reminder.attempts,
    });
    if let Some(channel) = reminder.delivered_via {
        value["delivered_by"] = json!(channel);
    }
    if let Some(reason) = &reminder.failure_reason {
        value["failure_reason"] = json!(reason);
    }
    if let Some(next) = reminder
        .next_attempt_at
        .filter(|_| reminder.status == ReminderStatus::Pending)
    {
        value["next_attempt"] = json!(zone.format(next));
    }
    if !reminder.attempt_log.is_empty() {
        value["attempts"] = reminder
            .attempt_log
            .iter()
            .map(|attempt| {
                json!({
                    "at": zone.format(attempt.at),
                    "by": attempt.channel,
                    "outcome": attempt.outcome,
                })
            })
            .collect();
    }
    value
}

async fn add_task(
    store: &dyn Store,
    limits: &ToolLimits,
    phone: &PhoneNumber,
    args: AddTask,
    zone: &CallerZone,
) -> Result<ToolResult, StoreError> {
    let limit = limits.open_tasks;
    if limit > 0 && store.list_tasks(phone, Some(TaskStatus::Open)).await?.len() >= limit {
        return Ok(ToolResult::error(
            ToolOutcome::LimitReached,
            &format!(
                "The caller has {limit} open tasks, the most allowed; nothing was added. Tell them to complete some first."
            ),
        ));
    }
    if args.title.trim().is_empty() {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            "The task needs a title.",
        ));
    }
    let due_at = match args.due.as_deref().filter(|d| !d.trim().is_empty()) {
        None => None,
        Some(text) => match zone.parse(text) {
            Ok(due) => Some(due),
            Err(err) => {
                return Ok(ToolResult::error(
                    ToolOutcome::InvalidArguments,
                    &err.to_string(),
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
    Ok(ToolResult::ok(json!({ "added": task_json(&task, zone) })))
}

async fn list_tasks(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: ListFilter,
    zone: &CallerZone,
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
        json!({ "tasks": tasks.iter().map(|t| task_json(t, zone)).collect::<Vec<_>>() }),
    ))
}

async fn complete_task(
    store: &dyn Store,
    phone: &PhoneNumber,
    id: &str,
    zone: &CallerZone,
) -> Result<ToolResult, StoreError> {
    Ok(match store.complete_task(phone, id.trim()).await? {
        Some(task) => ToolResult::ok(json!({ "completed": task_json(&task, zone) })),
        None => ToolResult::error(
            ToolOutcome::NotFound,
            "No task with that id was found for this caller.",
        ),
    })
}

async fn add_reminder(
    store: &dyn Store,
    limits: &ToolLimits,
    phone: &PhoneNumber,
    args: AddReminder,
    now: DateTime<Utc>,
    zone: &CallerZone,
) -> Result<ToolResult, StoreError> {
    let limit = limits.pending_reminders;
    if limit > 0
        && store
            .list_reminders(phone, Some(ReminderStatus::Pending))
            .await?
            .len()
            >= limit
    {
        return Ok(ToolResult::error(
            ToolOutcome::LimitReached,
            &format!(
                "The caller has {limit} pending reminders, the most allowed; nothing was added. Tell them to cancel some first."
            ),
        ));
    }
    if args.text.trim().is_empty() {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            "The reminder needs a text.",
        ));
    }
    let remind_at = match zone.parse_future(&args.remind_at, now) {
        Ok(time) => time,
        Err(err) => {
            return Ok(ToolResult::error(
                ToolOutcome::InvalidArguments,
                &err.to_string(),
            ));
        }
    };
    let reminder = store
        .add_reminder(phone, args.text.trim(), remind_at)
        .await?;
    Ok(ToolResult::ok(
        json!({ "added": reminder_json(&reminder, zone) }),
    ))
}

async fn list_reminders(
    store: &dyn Store,
    phone: &PhoneNumber,
    args: ListFilter,
    zone: &CallerZone,
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
        json!({ "reminders": reminders.iter().map(|r| reminder_json(r, zone)).collect::<Vec<_>>() }),
    ))
}

async fn cancel_reminder(
    store: &dyn Store,
    phone: &PhoneNumber,
    id: &str,
    zone: &CallerZone,
) -> Result<ToolResult, StoreError> {
    Ok(match store.cancel_reminder(phone, id.trim()).await? {
        Some(reminder) => ToolResult::ok(json!({ "cancelled": reminder_json(&reminder, zone) })),
        None => ToolResult::error(
            ToolOutcome::NotFound,
            "No pending reminder with that id was found for this caller.",
        ),
    })
}

/// Stores the zone the caller stated, once the tz database knows it.
async fn set_time_zone(
    store: &dyn Store,
    phone: &PhoneNumber,
    name: &str,
    now: DateTime<Utc>,
) -> Result<ToolResult, StoreError> {
    let Some(zone) = local_time::parse_zone(name) else {
        return Ok(ToolResult::error(
            ToolOutcome::InvalidArguments,
            &format!(
                "\"{name}\" is not a time zone I know; use an IANA name such as Europe/Berlin."
            ),
        ));
    };
    store.set_caller_time_zone(phone, zone.name()).await?;
    let zone = local_time::caller_zone(Some(phone), Some(zone.name()));
    Ok(ToolResult::ok(json!({
        "time_zone": zone.zone.name(),
        "now": zone.format(now),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn tasks_and_reminders_past_the_callers_limits_are_refused_and_not_stored() {
        let (store, dir) = store().await;
        let phone = PhoneNumber::new("447700900123");
        let other = PhoneNumber::new("447700900456");
        let limits = ToolLimits {
            open_tasks: 2,
            pending_reminders: 1,
        };
        let now = utc("2026-12-07T12:00:00Z");
        let add_task = |phone| {
            dispatch(
                &store,
                &limits,
                Some(phone),
                "add_task",
                r#"{"title":"milk"}"#,
                now,
            )
        };
        assert_eq!(add_task(&phone).await.outcome, ToolOutcome::Ok);
        assert_eq!(add_task(&phone).await.outcome, ToolOutcome::Ok);
        let refused = add_task(&phone).await;
        assert_eq!(refused.outcome, ToolOutcome::LimitReached);
        assert!(
            refused
                .output
                .contains("The caller has 2 open tasks, the most allowed"),
            "{}",
            refused.output
        );
        let open = store
            .list_tasks(&phone, Some(TaskStatus::Open))
            .await
            .expect("tasks");
        assert_eq!(open.len(), 2);
        // Another caller has a limit of their own; a completed task frees a place.
        assert_eq!(add_task(&other).await.outcome, ToolOutcome::Ok);
        store
            .complete_task(&phone, &open[0].id)
            .await
            .expect("completed");
        assert_eq!(add_task(&phone).await.outcome, ToolOutcome::Ok);

        let arguments = json!({ "text": "call mum", "remind_at": "2026-12-08T15:00" }).to_string();
        let add_reminder = || {
            dispatch(
                &store,
                &limits,
                Some(&phone),
                "add_reminder",
                &arguments,
                now,
            )
        };
        assert_eq!(add_reminder().await.outcome, ToolOutcome::Ok);
        let refused = add_reminder().await;
        assert_eq!(refused.outcome, ToolOutcome::LimitReached);
        assert!(
            refused
                .output
                .contains("1 pending reminders, the most allowed")
        );
        let pending = store
            .list_reminders(&phone, Some(ReminderStatus::Pending))
            .await
            .expect("reminders");
        assert_eq!(pending.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_reminder_in_the_past_is_refused_with_a_message_the_ai_can_say() {
        let (store, dir) = store().await;
        let phone = PhoneNumber::new("447700900123");
        let now = Utc::now();
        let past = (now - chrono::Duration::hours(1)).to_rfc3339();
        let result = dispatch(
            &store,
            &ToolLimits::default(),
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
            let result = dispatch(
                &store,
                &ToolLimits::default(),
                Some(&phone),
                name,
                arguments,
                now,
            )
            .await;
            assert_eq!(
                result.outcome, outcome,
                "{name} {arguments}: {}",
                result.output
            );
            assert!(result.output.contains("error"));
        }
        let hidden = dispatch(
            &store,
            &ToolLimits::default(),
            None,
            "list_tasks",
            "{}",
            now,
        )
        .await;
        assert_eq!(hidden.outcome, ToolOutcome::NoCaller);
        let listed = dispatch(
            &store,
            &ToolLimits::default(),
            Some(&phone),
            "list_tasks",
            "",
            now,
        )
        .await;
        assert_eq!(listed.outcome, ToolOutcome::Ok);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    async fn add_reminder_at(
        store: &dyn Store,
        phone: &PhoneNumber,
        local: &str,
        now: DateTime<Utc>,
    ) -> ToolResult {
        let arguments = json!({"text": "call the dentist", "remind_at": local}).to_string();
        dispatch(
            store,
            &ToolLimits::default(),
            Some(phone),
            "add_reminder",
            &arguments,
            now,
        )
        .await
    }

    #[tokio::test]
    async fn local_times_are_the_callers_own_a_uk_and_a_us_number_and_a_stated_zone() {
        let (store, dir) = store().await;
        let now = utc("2026-12-07T12:00:00Z");
        let uk = PhoneNumber::new("447700900123");
        let us = PhoneNumber::new("14155550123");
        for (phone, stored) in [(&uk, "2026-12-08T15:00:00Z"), (&us, "2026-12-08T23:00:00Z")] {
            let result = add_reminder_at(&store, phone, "2026-12-08T15:00", now).await;
            assert_eq!(result.outcome, ToolOutcome::Ok, "{}", result.output);
            let reminders = store.list_reminders(phone, None).await.unwrap();
            assert_eq!(reminders[0].remind_at, utc(stored));
            // Read back in the caller's local time.
            assert!(
                result.output.contains("2026-12-08T15:00"),
                "{}",
                result.output
            );
        }
        // The UK caller says they are in Berlin now: the next local time is Berlin's.
        let set = dispatch(
            &store,
            &ToolLimits::default(),
            Some(&uk),
            "set_time_zone",
            r#"{"time_zone":"Europe/Berlin"}"#,
            now,
        )
        .await;
        assert_eq!(set.outcome, ToolOutcome::Ok, "{}", set.output);
        let result = add_reminder_at(&store, &uk, "2026-12-09T15:00", now).await;
        assert_eq!(result.outcome, ToolOutcome::Ok, "{}", result.output);
        let times: Vec<_> = store
            .list_reminders(&uk, None)
            .await
            .unwrap()
            .iter()
            .map(|r| r.remind_at)
            .collect();
        assert!(times.contains(&utc("2026-12-09T14:00:00Z")), "{times:?}");
        let listed = dispatch(
            &store,
            &ToolLimits::default(),
            Some(&uk),
            "list_reminders",
            "{}",
            now,
        )
        .await;
        assert!(
            listed.output.contains("+01:00") && listed.output.contains("Europe/Berlin"),
            "{}",
            listed.output
        );
        let bad = dispatch(
            &store,
            &ToolLimits::default(),
            Some(&uk),
            "set_time_zone",
            r#"{"time_zone":"Berlin time"}"#,
            now,
        )
        .await;
        assert_eq!(bad.outcome, ToolOutcome::InvalidArguments);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_time_in_a_dst_gap_or_the_past_is_refused_and_nothing_is_stored() {
        let (store, dir) = store().await;
        let uk = PhoneNumber::new("447700900123");
        let now = utc("2026-03-28T12:00:00Z");
        let gap = add_reminder_at(&store, &uk, "2026-03-29T01:30", now).await;
        assert_eq!(gap.outcome, ToolOutcome::InvalidArguments);
        assert!(gap.output.contains("clocks go forward"), "{}", gap.output);
        let past = add_reminder_at(&store, &uk, "2026-03-28T11:30", now).await;
        assert!(past.output.contains("in the past"), "{}", past.output);
        // After the change the same wall time is an hour earlier in UTC.
        let after = add_reminder_at(&store, &uk, "2026-03-29T09:00", now).await;
        assert_eq!(after.outcome, ToolOutcome::Ok, "{}", after.output);
        let reminders = store.list_reminders(&uk, None).await.unwrap();
        assert_eq!(reminders.len(), 1);
        assert_eq!(reminders[0].remind_at, utc("2026-03-29T08:00:00Z"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_phone_number_in_the_arguments_is_refused() {
        let result = parse::<TaskId>(r#"{"task_id":"x","phone_number":"447700900123"}"#);
        assert!(matches!(result, Err(r) if r.outcome == ToolOutcome::InvalidArguments));
    }

    /// Ada and Bob each with a task and a reminder.
    async fn two_callers(store: &dyn Store) -> (PhoneNumber, PhoneNumber) {
        let (ada, bob) = (
            PhoneNumber::new("447700900123"),
            PhoneNumber::new("447700900456"),
        );
        let later = Utc::now() + chrono::Duration::hours(2);
        for phone in [&ada, &bob] {
            let task = NewTask {
                title: "Buy milk".into(),
                notes: None,
                due_at: None,
            };
            store.add_task(phone, task).await.unwrap();
            store.add_reminder(phone, "pills", later).await.unwrap();
        }
        (ada, bob)
    }

    async fn rows_of(store: &dyn Store, phone: &PhoneNumber) -> (usize, usize) {
        (
            store.list_tasks(phone, None).await.unwrap().len(),
            store.list_reminders(phone, None).await.unwrap().len(),
        )
    }

    #[tokio::test]
    async fn forget_me_asks_first_and_deletes_only_the_callers_data_once_confirmed() {
        let (store, dir) = store().await;
        let (ada, bob) = two_callers(&store).await;
        let mut forget = ForgetMe::default();

        // Asked: the AI learns what would go and that the caller must confirm; nothing goes.
        let ForgetStep::Answer(asked) = forget.step("{}", true) else {
            panic!("a request without confirm is answered at once");
        };
        assert_eq!(asked.outcome, ToolOutcome::Ok);
        let output: Value = serde_json::from_str(&asked.output).unwrap();
        assert_eq!(output["deleted"], json!(false));
        assert!(output["say"].as_str().unwrap().contains("confirm true"));
        assert!(!forget.confirmed());
        assert_eq!(rows_of(&store, &ada).await, (1, 1));

        // Confirmed after the request: deleted, Ada's only.
        assert_eq!(forget.step(r#"{"confirm":true}"#, true), ForgetStep::Delete);
        assert!(forget.confirmed());
        let deleted = forget_caller(&store, &ada).await;
        assert_eq!(deleted.outcome, ToolOutcome::Ok);
        let output: Value = serde_json::from_str(&deleted.output).unwrap();
        assert_eq!(
            (&output["deleted"], &output["tasks"], &output["reminders"]),
            (&json!(true), &json!(1), &json!(1))
        );
        assert_eq!(rows_of(&store, &ada).await, (0, 0));
        assert_eq!(rows_of(&store, &bob).await, (1, 1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn forget_me_confirmed_without_a_request_on_the_call_is_refused_and_deletes_nothing() {
        let (store, dir) = store().await;
        let (ada, _) = two_callers(&store).await;
        let mut forget = ForgetMe::default();
        let refused = forget.step(r#"{"confirm":true}"#, true);
        assert!(
            matches!(&refused, ForgetStep::Answer(r) if r.outcome == ToolOutcome::NotConfirmed),
            "{refused:?}"
        );
        assert!(!forget.confirmed());
        // confirm false is a request, not a confirmation; a phone number is refused.
        assert!(matches!(
            forget.step(r#"{"phone_number":"447700900456","confirm":true}"#, true),
            ForgetStep::Answer(r) if r.outcome == ToolOutcome::InvalidArguments
        ));
        assert!(matches!(
            forget.step("", false),
            ForgetStep::Answer(r) if r.outcome == ToolOutcome::NoCaller
        ));
        // Outside a call (no state) it never deletes.
        let outside = dispatch(
            &store,
            &ToolLimits::default(),
            Some(&ada),
            FORGET_ME,
            r#"{"confirm":true}"#,
            Utc::now(),
        )
        .await;
        assert_eq!(outside.outcome, ToolOutcome::NotConfirmed);
        assert_eq!(rows_of(&store, &ada).await, (1, 1));
        let _ = std::fs::remove_dir_all(dir);
    }
}
