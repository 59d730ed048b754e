//! A strict local PostgREST double for the Supabase store's contract tests: the tables of the
//! schema in memory with what the database checks on a write (timestamps, check constraints,
//! the primary key and unique indexes, the `callers` trigger), PostgREST's query grammar as far
//! as the store uses it (`eq.`, `gte.`, `is.` filters, `select` with an inner-joined `calls`
//! embed, `order`, `limit`), upserts (`resolution=merge-duplicates`, `on_conflict`), DELETE with
//! filters and the schema's foreign keys (a call's turns cascade), the SQL functions
//! `claim_due_reminders`, `purge_history_before` and `forget_caller` at `/rpc/`, its `apikey` +
//! bearer check, its status codes and error bodies, every request recorded. Its clock (`now()` in the database) can be moved on.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use schema::{Row, Table, Violation, before_update, tables, with_defaults};

mod functions;
mod schema;

/// One request as the double received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, as sent.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RecordedRequest {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct Failures {
    left: usize,
    /// Only requests to this table (or `rpc/{function}`) fail; `None`: any.
    table: Option<String>,
    status: u16,
    body: String,
}

struct Shared {
    key: String,
    tables: Mutex<HashMap<&'static str, Table>>,
    requests: Mutex<Vec<RecordedRequest>>,
    failures: Mutex<Failures>,
    delay: Mutex<Duration>,
    /// How far the database's clock is ahead of the wall clock.
    clock_offset: Mutex<chrono::Duration>,
}

impl Shared {
    /// The database's `now()`.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.clock_offset.lock()
    }
}

/// The running double; cheap to clone.
#[derive(Clone)]
pub struct PostgrestDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": code, "details": null, "hint": null, "message": message}).to_string(),
    )
        .into_response()
}

/// PostgREST's error answer before it becomes a response: small enough to return in a `Result`.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

fn rows_response(status: StatusCode, rows: Vec<Value>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Value::Array(rows).to_string(),
    )
        .into_response()
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

/// Whether `row` passes the PostgREST filter `op.value` on `value`.
fn passes(value: Option<&Value>, filter: &str) -> Result<bool, String> {
    let (op, expected) = filter
        .split_once('.')
        .ok_or_else(|| format!("bad filter {filter}"))?;
    let actual = value.map(text_of).unwrap_or_else(|| "null".to_owned());
    match op {
        "eq" => Ok(actual == expected),
        "gte" => Ok(actual.as_str() >= expected),
        "is" => Ok(expected == "null" && value.is_none_or(Value::is_null)),
        other => Err(format!("operator {other} is not supported by the double")),
    }
}

impl PostgrestDouble {
    /// Serves on 127.0.0.1 with `key` as the only accepted service key.
    pub async fn start(key: &str) -> std::io::Result<PostgrestDouble> {
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            tables: Mutex::new(tables()),
            requests: Mutex::new(Vec::new()),
            failures: Mutex::new(Failures::default()),
            delay: Mutex::new(Duration::ZERO),
            clock_offset: Mutex::new(chrono::Duration::zero()),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/rest/v1/{table}", any(handle_table))
            .route("/rest/v1/rpc/{function}", any(handle_function))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { shared, addr })
    }

    /// The value for `SUPABASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// The next `times` requests get `status` with `body` (after the auth check).
    pub fn fail_next(&self, times: usize, status: u16, body: &str) {
        *self.shared.failures.lock() = Failures {
            left: times,
            table: None,
            status,
            body: body.to_owned(),
        };
    }

    /// Like [`PostgrestDouble::fail_next`], for requests to one table (or `rpc/{function}`) only.
    pub fn fail_next_on(&self, table: &str, times: usize, status: u16, body: &str) {
        *self.shared.failures.lock() = Failures {
            left: times,
            table: Some(table.to_owned()),
            status,
            body: body.to_owned(),
        };
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock() = delay;
    }

    /// The database's clock: the wall clock plus however far it was moved on.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.now()
    }

    /// Moves the database's clock on (leases expire, retries fall due) without waiting.
    pub fn advance_clock(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).expect("a test's step of the clock");
        *self.shared.clock_offset.lock() += by;
    }

    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.shared
            .tables
            .lock()
            .get(table)
            .map(|t| t.rows.iter().cloned().map(Value::Object).collect())
            .unwrap_or_default()
    }
}

/// What every request goes through first: it is recorded, waits the set delay, and its key is
/// checked; then a failure set with `fail_next` may answer instead. `target` is the table, or
/// `rpc/{function}`.
async fn admit(
    shared: &Shared,
    method: &Method,
    target: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    shared.requests.lock().push(RecordedRequest {
        method: method.to_string(),
        path: format!("/rest/v1/{target}"),
        query: query.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    });
    let delay = *shared.delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = format!("Bearer {}", shared.key);
    if header("apikey") != Some(shared.key.as_str())
        || header("authorization") != Some(bearer.as_str())
    {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "PGRST301",
            "JWSError (CompactDecodeError Invalid number of parts)",
        ));
    }
    let mut failures = shared.failures.lock();
    if failures.left > 0 && failures.table.as_deref().is_none_or(|t| t == target) {
        failures.left -= 1;
        return Some(
            (
                StatusCode::from_u16(failures.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, "application/json")],
                failures.body.clone(),
            )
                .into_response(),
        );
    }
    None
}

/// Whether the `Prefer` header holds `preference` (it is a comma-separated list).
fn prefers(headers: &HeaderMap, preference: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim() == preference)
}

async fn handle_table(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    if let Some(answer) = admit(&shared, &method, &table, &query, &headers, &body).await {
        return answer;
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let now = shared.now();
    let mut tables = shared.tables.lock();
    if !tables.contains_key(table.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "PGRST205",
            &format!("Could not find the table 'public.{table}' in the schema cache"),
        );
    }
    let write = Write {
        table: &table,
        representation: prefers(&headers, "return=representation"),
        now,
    };
    match method {
        Method::GET => select(&tables, &table, &params),
        Method::POST => {
            let rows = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(rows)) => rows,
                Ok(row @ Value::Object(_)) => vec![row],
                _ => return error(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json"),
            };
            let merge = prefers(&headers, "resolution=merge-duplicates");
            let on_conflict = params
                .iter()
                .find(|(key, _)| key == "on_conflict")
                .map(|(_, columns)| columns.as_str());
            match (merge, on_conflict) {
                (true, on_conflict) => upsert(&mut tables, &write, rows, on_conflict),
                (false, _) => insert(&mut tables, &write, rows),
            }
        }
        Method::PATCH => {
            let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(&body) else {
                return error(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json");
            };
            update(&mut tables, &write, &params, changes)
        }
        Method::DELETE => delete(&mut tables, &write, &params),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "PGRST117",
            "Unsupported HTTP method",
        ),
    }
}

async fn handle_function(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(function): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let target = format!("rpc/{function}");
    if let Some(answer) = admit(&shared, &method, &target, &query, &headers, &body).await {
        return answer;
    }
    // The schema's functions are volatile: PostgREST runs them with POST only.
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "PGRST101",
            "For volatile functions, only POST is allowed",
        );
    }
    let now = shared.now();
    let mut tables = shared.tables.lock();
    functions::call(&mut tables, &function, &body, now)
}

fn select(
    tables: &HashMap<&'static str, Table>,
    table: &str,
    params: &[(String, String)],
) -> Response {
    let mut selected: Vec<Map<String, Value>> = Vec::new();
    let mut columns: Option<Vec<String>> = None;
    let mut embed_calls = false;
    let mut order: Option<(String, bool)> = None;
    let mut limit = usize::MAX;
    let mut filters = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "select" if value != "*" => {
                let mut plain = Vec::new();
                for part in value.split(',') {
                    if part == "calls!inner(phone_number)" {
                        embed_calls = true;
                    } else {
                        plain.push(part.to_owned());
                    }
                }
                columns = Some(plain);
            }
            "select" => {}
            "order" => {
                let (column, direction) = value.split_once('.').unwrap_or((value, "asc"));
                order = Some((column.to_owned(), direction == "desc"));
            }
            "limit" => limit = value.parse().unwrap_or(usize::MAX),
            _ => filters.push((key.clone(), value.clone())),
        }
    }
    let calls = &tables["calls"].rows;
    for row in &tables[table].rows {
        let mut row = row.clone();
        if embed_calls {
            let call = calls
                .iter()
                .find(|call| call.get("id") == row.get("call_id"));
            // An inner join: turns without their call are left out.
            let Some(call) = call else { continue };
            row.insert(
                "calls".into(),
                json!({"phone_number": call.get("phone_number").cloned().unwrap_or(Value::Null)}),
            );
        }
        let mut keep = true;
        for (column, filter) in &filters {
            let value = match column.strip_prefix("calls.") {
                Some(embedded) if embed_calls => row
                    .get("calls")
                    .and_then(|calls| calls.get(embedded))
                    .cloned(),
                _ => row.get(column).cloned(),
            };
            match passes(value.as_ref(), filter) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(message) => return error(StatusCode::BAD_REQUEST, "PGRST100", &message),
            }
        }
        if keep {
            selected.push(row);
        }
    }
    if let Some((column, descending)) = order {
        selected.sort_by(|a, b| {
            let a = a.get(&column).map(text_of).unwrap_or_default();
            let b = b.get(&column).map(text_of).unwrap_or_default();
            if descending { b.cmp(&a) } else { a.cmp(&b) }
        });
    }
    let rows = selected
        .into_iter()
        .take(limit)
        .map(|row| match &columns {
            None => Value::Object(row),
            Some(columns) => {
                let mut picked: Map<String, Value> = columns
                    .iter()
                    .filter_map(|c| row.get(c).map(|v| (c.clone(), v.clone())))
                    .collect();
                if let Some(calls) = row.get("calls") {
                    picked.insert("calls".into(), calls.clone());
                }
                Value::Object(picked)
            }
        })
        .collect();
    rows_response(StatusCode::OK, rows)
}

/// What a write needs besides its rows: the table, whether to answer with the rows written,
/// and the database's clock.
struct Write<'a> {
    table: &'a str,
    representation: bool,
    now: DateTime<Utc>,
}

impl Write<'_> {
    /// The answer to a write that went through.
    fn answer(&self, status: StatusCode, written: Vec<Row>) -> Response {
        if self.representation {
            rows_response(status, written.into_iter().map(Value::Object).collect())
        } else if status == StatusCode::CREATED {
            StatusCode::CREATED.into_response()
        } else {
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// PostgREST's answer to a row the database refused.
fn refused(violation: Violation) -> Response {
    match violation {
        Violation::Invalid(code, message) => error(StatusCode::BAD_REQUEST, code, &message),
        Violation::Duplicate(constraint) => error(
            StatusCode::CONFLICT,
            "23505",
            &format!("duplicate key value violates unique constraint \"{constraint}\""),
        ),
    }
}

/// The payload's columns must all exist (PGRST204 otherwise).
fn unknown_column(target: &Table, table: &str, row: &Row) -> Option<Refusal> {
    row.keys()
        .find(|k| !target.columns.contains(&k.as_str()))
        .map(|unknown| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "PGRST204",
                format!("Could not find the '{unknown}' column of '{table}' in the schema cache"),
            )
        })
}

/// The payload as rows (objects), or PostgREST's refusal.
fn payload_rows(target: &Table, table: &str, rows: Vec<Value>) -> Result<Vec<Row>, Refusal> {
    let mut objects = Vec::with_capacity(rows.len());
    for row in rows {
        let Value::Object(row) = row else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "PGRST102",
                "Empty or invalid json",
            ));
        };
        if let Some(refusal) = unknown_column(target, table, &row) {
            return Err(refusal);
        }
        objects.push(row);
    }
    Ok(objects)
}

/// A foreign key the double knows: a turn belongs to a call.
fn missing_parent(
    tables: &HashMap<&'static str, Table>,
    table: &str,
    row: &Row,
) -> Option<Response> {
    let call_exists = || {
        tables["calls"]
            .rows
            .iter()
            .any(|call| call.get("id") == row.get("call_id"))
    };
    (table == "transcript_turns" && !call_exists()).then(|| {
        error(
            StatusCode::CONFLICT,
            "23503",
            "insert or update on table \"transcript_turns\" violates foreign key constraint",
        )
    })
}

/// Adds the rows, all or none.
fn insert(
    tables: &mut HashMap<&'static str, Table>,
    write: &Write<'_>,
    rows: Vec<Value>,
) -> Response {
    let table = write.table;
    let target = &tables[table];
    let rows = match payload_rows(target, table, rows) {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    let mut next = target.rows.clone();
    let mut written = Vec::new();
    for row in rows {
        let row = with_defaults(table, row, target.columns, write.now);
        if let Some(refusal) = missing_parent(tables, table, &row) {
            return refusal;
        }
        next.push(row.clone());
        if let Some(violation) = target.violation_at(table, &next, next.len() - 1) {
            return refused(violation);
        }
        written.push(row);
    }
    tables.get_mut(table).expect("checked by the caller").rows = next;
    write.answer(StatusCode::CREATED, written)
}

/// An upsert (`Prefer: resolution=merge-duplicates`): a row whose conflict columns match an
/// existing row's updates that row's columns named in the payload; others are inserted. The
/// conflict columns must be a unique constraint's (the primary key here), as PostgreSQL's `on
/// conflict` requires.
fn upsert(
    tables: &mut HashMap<&'static str, Table>,
    write: &Write<'_>,
    rows: Vec<Value>,
    on_conflict: Option<&str>,
) -> Response {
    let table = write.table;
    let target = &tables[table];
    let key: Vec<&str> = match on_conflict {
        None => target.primary_key.to_vec(),
        Some(columns) => columns.split(',').map(str::trim).collect(),
    };
    if key != target.primary_key {
        return error(
            StatusCode::BAD_REQUEST,
            "42P10",
            "there is no unique or exclusion constraint matching the ON CONFLICT specification",
        );
    }
    let rows = match payload_rows(target, table, rows) {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    let mut next = target.rows.clone();
    let mut written = Vec::new();
    for row in rows {
        let existing = next.iter().position(|old| {
            key.iter()
                .all(|k| row.get(*k).is_some_and(|v| old.get(*k) == Some(v)))
        });
        let index = match existing {
            Some(index) => {
                let mut merged = next[index].clone();
                merged.extend(row);
                before_update(table, &next[index], &mut merged, write.now);
                next[index] = merged;
                index
            }
            None => {
                let row = with_defaults(table, row, target.columns, write.now);
                if let Some(refusal) = missing_parent(tables, table, &row) {
                    return refusal;
                }
                next.push(row);
                next.len() - 1
            }
        };
        if let Some(violation) = target.violation_at(table, &next, index) {
            return refused(violation);
        }
        written.push(next[index].clone());
    }
    tables.get_mut(table).expect("checked by the caller").rows = next;
    write.answer(StatusCode::CREATED, written)
}

/// Changes the rows that pass every filter, all or none.
fn update(
    tables: &mut HashMap<&'static str, Table>,
    write: &Write<'_>,
    params: &[(String, String)],
    changes: Map<String, Value>,
) -> Response {
    let table = write.table;
    let target = &tables[table];
    if let Some(refusal) = unknown_column(target, table, &changes) {
        return refusal.into_response();
    }
    let mut next = target.rows.clone();
    let mut updated = Vec::new();
    for index in 0..next.len() {
        let mut keep = true;
        for (column, filter) in params {
            match passes(next[index].get(column), filter) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(message) => return error(StatusCode::BAD_REQUEST, "PGRST100", &message),
            }
        }
        if !keep {
            continue;
        }
        let mut changed = next[index].clone();
        changed.extend(changes.clone());
        before_update(table, &next[index], &mut changed, write.now);
        next[index] = changed;
        if let Some(violation) = target.violation_at(table, &next, index) {
            return refused(violation);
        }
        updated.push(next[index].clone());
    }
    tables.get_mut(table).expect("checked by the caller").rows = next;
    write.answer(StatusCode::OK, updated)
}

/// Deletes the rows that pass every filter. Supabase runs PostgREST with `pg-safeupdate`, so a
/// DELETE without a filter is refused rather than emptying the table.
fn delete(
    tables: &mut HashMap<&'static str, Table>,
    write: &Write<'_>,
    params: &[(String, String)],
) -> Response {
    if params.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "21000",
            "DELETE requires a WHERE clause",
        );
    }
    let mut doomed = Vec::new();
    for (index, row) in tables[write.table].rows.iter().enumerate() {
        let mut keep = true;
        for (column, filter) in params {
            match passes(row.get(column), filter) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(message) => return error(StatusCode::BAD_REQUEST, "PGRST100", &message),
            }
        }
        if keep {
            doomed.push(index);
        }
    }
    let deleted = delete_rows(tables, write.table, |index, _| doomed.contains(&index));
    write.answer(StatusCode::OK, deleted)
}

/// Deletes the rows of `table` that `doomed` picks (by position and row) with what the schema's
/// foreign keys do: a call's transcript turns go with it (`on delete cascade`), a deleted
/// reminder leaves its calls with no `reminder_id` (`on delete set null`). The deleted rows.
fn delete_rows(
    tables: &mut HashMap<&'static str, Table>,
    table: &str,
    doomed: impl Fn(usize, &Row) -> bool,
) -> Vec<Row> {
    let target = tables.get_mut(table).expect("a table of the schema");
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    for (index, row) in std::mem::take(&mut target.rows).into_iter().enumerate() {
        if doomed(index, &row) {
            deleted.push(row);
        } else {
            kept.push(row);
        }
    }
    target.rows = kept;
    let ids: Vec<&Value> = deleted.iter().filter_map(|row| row.get("id")).collect();
    match table {
        "calls" => {
            let turns = tables.get_mut("transcript_turns").expect("in the schema");
            turns
                .rows
                .retain(|turn| turn.get("call_id").is_none_or(|call| !ids.contains(&call)));
        }
        "reminders" => {
            let calls = tables.get_mut("calls").expect("in the schema");
            for call in &mut calls.rows {
                if call.get("reminder_id").is_some_and(|id| ids.contains(&id)) {
                    call.insert("reminder_id".into(), Value::Null);
                }
            }
        }
        _ => {}
    }
    deleted
}

#[cfg(test)]
mod supabase_store_tests;

#[cfg(test)]
mod reminder_delivery_tests;
