//! The double's copy of the Supabase schema (`infra/supabase/migrations`): the tables and their
//! columns, what the database checks on every write (timestamps that parse, check constraints,
//! the primary key and unique indexes), the defaults it fills in, and the `callers` trigger.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

pub(super) type Row = Map<String, Value>;

pub(super) struct Table {
    pub columns: &'static [&'static str],
    pub primary_key: &'static [&'static str],
    /// `timestamptz` columns: a value that does not parse is refused, as PostgreSQL does.
    pub timestamps: &'static [&'static str],
    pub checks: &'static [Check],
    pub unique: &'static [UniqueIndex],
    pub rows: Vec<Row>,
}

/// A check constraint of the form `column in (...)`: null or one of `allowed`.
pub(super) struct Check {
    pub name: &'static str,
    pub column: &'static str,
    pub allowed: &'static [&'static str],
}

/// A unique index beyond the primary key: `columns` are unique among the rows its predicate
/// (`applies`, a partial index's `where`) holds for.
pub(super) struct UniqueIndex {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    pub applies: fn(&Row) -> bool,
}

/// A constraint a row breaks: PostgREST answers 400 (a check, a bad value) or 409 (uniqueness).
pub(super) enum Violation {
    /// SQLSTATE and message.
    Invalid(&'static str, String),
    Duplicate(String),
}

const REMINDER_STATUSES: &[&str] = &["pending", "calling", "delivered", "failed", "cancelled"];

/// `reminders_one_open_callback`: `where kind = 'callback' and status in ('pending', 'calling')`.
fn is_open_callback(row: &Row) -> bool {
    row.get("kind").and_then(Value::as_str) == Some("callback")
        && matches!(
            row.get("status").and_then(Value::as_str),
            Some("pending" | "calling")
        )
}

pub(super) fn tables() -> HashMap<&'static str, Table> {
    let table = |columns, primary_key, timestamps, checks, unique| Table {
        columns,
        primary_key,
        timestamps,
        checks,
        unique,
        rows: Vec::new(),
    };
    HashMap::from([
        (
            "tasks",
            table(
                &[
                    "id",
                    "phone_number",
                    "title",
                    "notes",
                    "status",
                    "due_at",
                    "created_at",
                    "completed_at",
                ],
                &["id"],
                &["due_at", "created_at", "completed_at"],
                &[Check {
                    name: "tasks_status_check",
                    column: "status",
                    allowed: &["open", "done"],
                }],
                &[],
            ),
        ),
        (
            "reminders",
            table(
                &[
                    "id",
                    "phone_number",
                    "text",
                    "remind_at",
                    "status",
                    "attempts",
                    "last_attempt_at",
                    "created_at",
                    "kind",
                    "next_attempt_at",
                    "delivered_via",
                    "failure_reason",
                    "attempt_log",
                    "claimed_by",
                    "claim_expires_at",
                ],
                &["id"],
                &[
                    "remind_at",
                    "last_attempt_at",
                    "created_at",
                    "next_attempt_at",
                    "claim_expires_at",
                ],
                &[
                    Check {
                        name: "reminders_status_check",
                        column: "status",
                        allowed: REMINDER_STATUSES,
                    },
                    Check {
                        name: "reminders_kind_check",
                        column: "kind",
                        allowed: &["reminder", "callback"],
                    },
                    Check {
                        name: "reminders_delivered_via_check",
                        column: "delivered_via",
                        allowed: &["call", "message"],
                    },
                ],
                &[UniqueIndex {
                    name: "reminders_one_open_callback",
                    columns: &["phone_number"],
                    applies: is_open_callback,
                }],
            ),
        ),
        (
            "calls",
            table(
                &[
                    "id",
                    "phone_number",
                    "direction",
                    "started_at",
                    "answered_at",
                    "ended_at",
                    "duration_seconds",
                    "end_reason",
                    "reminder_id",
                ],
                &["id"],
                &["started_at", "answered_at", "ended_at"],
                &[Check {
                    name: "calls_direction_check",
                    column: "direction",
                    allowed: &["inbound", "outbound"],
                }],
                &[],
            ),
        ),
        (
            "transcript_turns",
            table(
                &["call_id", "seq", "role", "text", "at"],
                &["call_id", "seq"],
                &["at"],
                &[Check {
                    name: "transcript_turns_role_check",
                    column: "role",
                    allowed: &["user", "assistant"],
                }],
                &[],
            ),
        ),
        (
            "callers",
            table(
                &["phone_number", "time_zone", "last_message_at", "updated_at"],
                &["phone_number"],
                &["last_message_at", "updated_at"],
                &[],
                &[],
            ),
        ),
        (
            "blocked_callers",
            table(
                &["phone_number", "reason", "blocked_at"],
                &["phone_number"],
                &["blocked_at"],
                &[],
                &[],
            ),
        ),
    ])
}

/// A timestamp as PostgreSQL's `now()` gives it: microseconds.
pub(super) fn timestamp(time: DateTime<Utc>) -> Value {
    json!(time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// A `timestamptz` column's value; `None` when null (or absent).
pub(super) fn time_of(row: &Row, column: &str) -> Option<DateTime<Utc>> {
    row.get(column)
        .and_then(Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

/// Defaults the database fills in on insert.
pub(super) fn with_defaults(
    table: &str,
    mut row: Row,
    columns: &[&str],
    now: DateTime<Utc>,
) -> Row {
    let mut default = |column: &str, value: Value| {
        if row.get(column).is_none_or(Value::is_null) {
            row.insert(column.to_owned(), value);
        }
    };
    match table {
        "tasks" => {
            default("id", json!(uuid::Uuid::new_v4().to_string()));
            default("status", json!("open"));
            default("created_at", timestamp(now));
        }
        "reminders" => {
            default("id", json!(uuid::Uuid::new_v4().to_string()));
            default("status", json!("pending"));
            default("attempts", json!(0));
            default("created_at", timestamp(now));
            default("kind", json!("reminder"));
            default("attempt_log", json!([]));
        }
        "transcript_turns" => default("at", timestamp(now)),
        "callers" => default("updated_at", timestamp(now)),
        "blocked_callers" => default("blocked_at", timestamp(now)),
        _ => {}
    }
    for column in columns {
        row.entry((*column).to_owned()).or_insert(Value::Null);
    }
    row
}

/// The `before update` triggers: `callers_keep_latest_message` never moves `last_message_at`
/// back and stamps `updated_at`.
pub(super) fn before_update(table: &str, old: &Row, new: &mut Row, now: DateTime<Utc>) {
    if table != "callers" {
        return;
    }
    // greatest() ignores nulls.
    let latest = match (
        time_of(old, "last_message_at"),
        time_of(new, "last_message_at"),
    ) {
        (Some(old_time), Some(new_time)) if old_time > new_time => old.get("last_message_at"),
        (Some(_), None) => old.get("last_message_at"),
        _ => new.get("last_message_at"),
    }
    .cloned()
    .unwrap_or(Value::Null);
    new.insert("last_message_at".into(), latest);
    new.insert("updated_at".into(), timestamp(now));
}

impl Table {
    /// What PostgreSQL refuses in `row` before uniqueness: a timestamp that does not parse, a
    /// value a check constraint does not allow, an attempt log that is not an array.
    pub(super) fn invalid(&self, table: &str, row: &Row) -> Option<Violation> {
        for column in self.timestamps {
            let value = row.get(*column).unwrap_or(&Value::Null);
            if !value.is_null() && time_of(row, column).is_none() {
                return Some(Violation::Invalid(
                    "22007",
                    format!("invalid input syntax for type timestamp with time zone: {value}"),
                ));
            }
        }
        let check_fails = |name: &str| {
            Violation::Invalid(
                "23514",
                format!("new row for relation \"{table}\" violates check constraint \"{name}\""),
            )
        };
        for check in self.checks {
            match row.get(check.column) {
                None | Some(Value::Null) => {}
                Some(Value::String(value)) if check.allowed.contains(&value.as_str()) => {}
                Some(_) => return Some(check_fails(check.name)),
            }
        }
        if table == "reminders" {
            match row.get("attempt_log") {
                Some(Value::Array(_)) => {}
                None | Some(Value::Null) => {
                    return Some(Violation::Invalid(
                        "23502",
                        "null value in column \"attempt_log\" of relation \"reminders\" \
                         violates not-null constraint"
                            .to_owned(),
                    ));
                }
                Some(_) => return Some(check_fails("reminders_attempt_log_check")),
            }
        }
        None
    }

    /// The unique constraint `row` would break among `others` (the table's rows but itself).
    pub(super) fn duplicate<'a>(
        &self,
        table: &str,
        row: &Row,
        others: impl Iterator<Item = &'a Row> + Clone,
    ) -> Option<Violation> {
        let same =
            |columns: &[&str], other: &Row| columns.iter().all(|c| row.get(*c) == other.get(*c));
        if others.clone().any(|other| same(self.primary_key, other)) {
            return Some(Violation::Duplicate(format!("{table}_pkey")));
        }
        self.unique
            .iter()
            .find(|index| {
                (index.applies)(row)
                    && others
                        .clone()
                        .any(|other| (index.applies)(other) && same(index.columns, other))
            })
            .map(|index| Violation::Duplicate(index.name.to_owned()))
    }

    /// The row at `index` of `rows`, checked against the others.
    pub(super) fn violation_at(
        &self,
        table: &str,
        rows: &[Row],
        index: usize,
    ) -> Option<Violation> {
        let row = &rows[index];
        self.invalid(table, row).or_else(|| {
            let others = rows
                .iter()
                .enumerate()
                .filter(move |(n, _)| *n != index)
                .map(|(_, other)| other);
            self.duplicate(table, row, others)
        })
    }
}
