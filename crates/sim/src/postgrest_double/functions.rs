//! The double's SQL functions, called as PostgREST calls them: `POST /rest/v1/rpc/{name}` with
//! the named arguments as a JSON object. `claim_due_reminders` does what
//! `0003_reminder_delivery.sql` defines, `purge_history_before` and `forget_caller` what
//! `0005_retention.sql` defines, under the double's lock (so atomically) and on the double's
//! clock.

use std::collections::{BTreeSet, HashMap};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::schema::{Row, Table, time_of, timestamp};
use super::{Refusal, delete_rows, rows_response};

/// The functions of the schema and their parameters. PostgREST finds a function by its name
/// and the names of the arguments sent: any other set of names is "not found".
const FUNCTIONS: &[(&str, &[&str])] = &[
    (
        "claim_due_reminders",
        &["p_owner", "p_lease_seconds", "p_limit"],
    ),
    ("purge_history_before", &["p_cutoff", "p_limit"]),
    ("forget_caller", &["p_phone"]),
];

pub(super) fn call(
    tables: &mut HashMap<&'static str, Table>,
    name: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Response {
    let answer = arguments(body).and_then(|args| {
        let given: BTreeSet<&str> = args.keys().map(String::as_str).collect();
        let known = FUNCTIONS.iter().any(|(function, parameters)| {
            *function == name && parameters.iter().copied().collect::<BTreeSet<_>>() == given
        });
        if !known {
            return Err(not_found(name, &given));
        }
        match name {
            "purge_history_before" => purge_history_before(tables, &args),
            "forget_caller" => forget_caller(tables, &args),
            _ => claim_due_reminders(tables, &args, now),
        }
    });
    match answer {
        Ok(rows) => rows_response(StatusCode::OK, rows),
        Err(refusal) => refusal.into_response(),
    }
}

/// The body's named arguments; an empty body is a call without arguments.
fn arguments(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(args)) => Ok(args),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "PGRST102",
            "Empty or invalid json",
        )),
    }
}

/// PostgREST's PGRST202, naming the parameters it searched with (sorted, as it does).
fn not_found(name: &str, given: &BTreeSet<&str>) -> Refusal {
    let parameters = given.iter().copied().collect::<Vec<_>>().join(", ");
    let message = if given.is_empty() {
        format!("Could not find the function public.{name} without parameters in the schema cache")
    } else {
        format!("Could not find the function public.{name}({parameters}) in the schema cache")
    };
    Refusal::new(StatusCode::NOT_FOUND, "PGRST202", message)
}

/// A `text` argument: a JSON string or null (anything else is refused, stricter than
/// PostgreSQL's casts).
fn text_argument(args: &Map<String, Value>, name: &str) -> Result<Option<String>, Refusal> {
    match &args[name] {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        other => Err(bad_value("text", other)),
    }
}

/// An `integer` argument: a JSON integer within PostgreSQL's `integer`, or null.
fn integer_argument(args: &Map<String, Value>, name: &str) -> Result<Option<i32>, Refusal> {
    match &args[name] {
        Value::Null => Ok(None),
        Value::Number(number) => match number.as_i64() {
            Some(value) => i32::try_from(value).map(Some).map_err(|_| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "22003",
                    format!("value \"{value}\" is out of range for type integer"),
                )
            }),
            None => Err(bad_value("integer", &args[name])),
        },
        other => Err(bad_value("integer", other)),
    }
}

fn bad_value(type_name: &str, value: &Value) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "22P02",
        format!("invalid input syntax for type {type_name}: {value}"),
    )
}

/// The function's own `raise exception ... using errcode`: class 22 is PostgREST's 400.
fn raised(code: &'static str, message: &str) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, code, message)
}

/// When a reminder is due: `coalesce(next_attempt_at, remind_at)`.
fn due_at(row: &Row) -> Option<DateTime<Utc>> {
    time_of(row, "next_attempt_at").or_else(|| time_of(row, "remind_at"))
}

/// The function's `where`: pending and due, or calling with a claim that has expired.
fn claimable(row: &Row, now: DateTime<Utc>) -> bool {
    match row.get("status").and_then(Value::as_str) {
        Some("pending") => due_at(row).is_some_and(|due| due <= now),
        Some("calling") => time_of(row, "claim_expires_at").is_none_or(|expiry| expiry <= now),
        _ => false,
    }
}

fn claim_due_reminders(
    tables: &mut HashMap<&'static str, Table>,
    args: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, Refusal> {
    let owner = text_argument(args, "p_owner")?.filter(|owner| !owner.is_empty());
    let lease = integer_argument(args, "p_lease_seconds")?.filter(|lease| *lease >= 0);
    let limit = integer_argument(args, "p_limit")?.filter(|limit| *limit >= 0);
    let owner = owner.ok_or_else(|| raised("22004", "p_owner is required"))?;
    let lease = lease.ok_or_else(|| raised("22023", "p_lease_seconds must be 0 or more"))?;
    let limit = limit.ok_or_else(|| raised("22023", "p_limit must be 0 or more"))?;

    let reminders = tables
        .get_mut("reminders")
        .expect("the schema has a reminders table");
    let mut due: Vec<usize> = (0..reminders.rows.len())
        .filter(|n| claimable(&reminders.rows[*n], now))
        .collect();
    // order by coalesce(next_attempt_at, remind_at), created_at, id
    due.sort_by_key(|n| {
        let row = &reminders.rows[*n];
        let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
        (due_at(row), time_of(row, "created_at"), id.to_owned())
    });
    due.truncate(usize::try_from(limit).unwrap_or(0));
    let until = timestamp(now + chrono::Duration::seconds(lease.into()));
    Ok(due
        .into_iter()
        .map(|n| {
            let row = &mut reminders.rows[n];
            row.insert("status".into(), Value::from("calling"));
            row.insert("claimed_by".into(), Value::from(owner.as_str()));
            row.insert("claim_expires_at".into(), until.clone());
            Value::Object(row.clone())
        })
        .collect())
}

/// A `timestamptz` argument: a JSON string PostgreSQL reads as a time, or null.
fn time_argument(args: &Map<String, Value>, name: &str) -> Result<Option<DateTime<Utc>>, Refusal> {
    match &args[name] {
        Value::Null => Ok(None),
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|time| Some(time.with_timezone(&Utc)))
            .map_err(|_| bad_value("timestamp with time zone", &args[name])),
        other => Err(bad_value("timestamp with time zone", other)),
    }
}

/// The positions of the rows `pick` holds for, in `order`, at most `limit` of them.
fn first_rows<K: Ord>(
    rows: &[Row],
    pick: impl Fn(&Row) -> bool,
    order: impl Fn(&Row) -> K,
    limit: i32,
) -> Vec<usize> {
    let mut picked: Vec<usize> = (0..rows.len()).filter(|n| pick(&rows[*n])).collect();
    picked.sort_by_key(|n| order(&rows[*n]));
    picked.truncate(usize::try_from(limit).unwrap_or(0));
    picked
}

/// When a call ended, or started if it never completed: `coalesce(ended_at, started_at)`.
fn call_end(row: &Row) -> Option<DateTime<Utc>> {
    time_of(row, "ended_at").or_else(|| time_of(row, "started_at"))
}

fn purge_history_before(
    tables: &mut HashMap<&'static str, Table>,
    args: &Map<String, Value>,
) -> Result<Vec<Value>, Refusal> {
    let cutoff = time_argument(args, "p_cutoff")?;
    let limit = integer_argument(args, "p_limit")?.filter(|limit| *limit >= 0);
    let cutoff = cutoff.ok_or_else(|| raised("22004", "p_cutoff is required"))?;
    let limit = limit.ok_or_else(|| raised("22023", "p_limit must be 0 or more"))?;

    let old_turns = first_rows(
        &tables["transcript_turns"].rows,
        |turn| time_of(turn, "at").is_some_and(|at| at < cutoff),
        |turn| time_of(turn, "at"),
        limit,
    );
    let purged_turns = delete_rows(tables, "transcript_turns", |n, _| old_turns.contains(&n));
    let turns = &tables["transcript_turns"].rows;
    let has_turns = |call: &Row| {
        turns
            .iter()
            .any(|turn| turn.get("call_id") == call.get("id"))
    };
    let old_calls = first_rows(
        &tables["calls"].rows,
        |call| call_end(call).is_some_and(|end| end < cutoff) && !has_turns(call),
        call_end,
        limit,
    );
    let purged_calls = delete_rows(tables, "calls", |n, _| old_calls.contains(&n));
    Ok(vec![json!({
        "purged_turns": purged_turns.len(),
        "purged_calls": purged_calls.len(),
    })])
}

fn forget_caller(
    tables: &mut HashMap<&'static str, Table>,
    args: &Map<String, Value>,
) -> Result<Vec<Value>, Refusal> {
    let phone = text_argument(args, "p_phone")?
        .filter(|phone| {
            (6..=15).contains(&phone.len()) && phone.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| raised("22023", "p_phone must be 6 to 15 digits"))?;
    let theirs =
        |_: usize, row: &Row| row.get("phone_number").and_then(Value::as_str) == Some(&phone);
    let call_ids: Vec<Value> = tables["calls"]
        .rows
        .iter()
        .filter(|call| theirs(0, call))
        .filter_map(|call| call.get("id").cloned())
        .collect();
    let turns = delete_rows(tables, "transcript_turns", |_, turn| {
        turn.get("call_id").is_some_and(|id| call_ids.contains(id))
    });
    let calls = delete_rows(tables, "calls", theirs);
    let reminders = delete_rows(tables, "reminders", theirs);
    let tasks = delete_rows(tables, "tasks", theirs);
    let profiles = delete_rows(tables, "callers", theirs);
    Ok(vec![json!({
        "forgotten_tasks": tasks.len(),
        "forgotten_reminders": reminders.len(),
        "forgotten_turns": turns.len(),
        "forgotten_calls": calls.len(),
        "forgotten_profiles": profiles.len(),
    })])
}
