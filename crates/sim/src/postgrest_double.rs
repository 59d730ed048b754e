//! A strict local PostgREST double for the Supabase store's contract tests: the four tables of
//! the schema in memory, PostgREST's query grammar as far as the store uses it (`eq.`, `gte.`,
//! `is.` filters, `select` with an inner-joined `calls` embed, `order`, `limit`), its
//! `apikey` + bearer check, its status codes and error bodies, every request recorded.

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
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

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

struct Table {
    columns: &'static [&'static str],
    primary_key: &'static [&'static str],
    rows: Vec<Map<String, Value>>,
}

#[derive(Default)]
struct Failures {
    left: usize,
    /// Only requests to this table fail; `None`: any.
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
}

/// The running double; cheap to clone.
#[derive(Clone)]
pub struct PostgrestDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

fn tables() -> HashMap<&'static str, Table> {
    let table = |columns, primary_key| Table {
        columns,
        primary_key,
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
                ],
                &["id"],
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
            ),
        ),
        (
            "transcript_turns",
            table(
                &["call_id", "seq", "role", "text", "at"],
                &["call_id", "seq"],
            ),
        ),
    ])
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": code, "details": null, "hint": null, "message": message}).to_string(),
    )
        .into_response()
}

fn rows_response(status: StatusCode, rows: Vec<Value>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Value::Array(rows).to_string(),
    )
        .into_response()
}

/// Defaults the database fills in on insert.
fn with_defaults(table: &str, mut row: Map<String, Value>, columns: &[&str]) -> Map<String, Value> {
    let now = chrono::Utc::now().to_rfc3339();
    let mut default = |column: &str, value: Value| {
        if row.get(column).is_none_or(Value::is_null) {
            row.insert(column.to_owned(), value);
        }
    };
    match table {
        "tasks" => {
            default("id", json!(uuid::Uuid::new_v4().to_string()));
            default("status", json!("open"));
            default("created_at", json!(now));
        }
        "reminders" => {
            default("id", json!(uuid::Uuid::new_v4().to_string()));
            default("status", json!("pending"));
            default("attempts", json!(0));
            default("created_at", json!(now));
        }
        "transcript_turns" => default("at", json!(now)),
        _ => {}
    }
    for column in columns {
        row.entry((*column).to_owned()).or_insert(Value::Null);
    }
    row
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
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/rest/v1/{table}", any(handle))
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

    /// Like [`PostgrestDouble::fail_next`], for requests to one table only.
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

    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.shared
            .tables
            .lock()
            .get(table)
            .map(|t| t.rows.iter().cloned().map(Value::Object).collect())
            .unwrap_or_default()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    shared.requests.lock().push(RecordedRequest {
        method: method.to_string(),
        path: format!("/rest/v1/{table}"),
        query: query.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
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
        return error(
            StatusCode::UNAUTHORIZED,
            "PGRST301",
            "JWSError (CompactDecodeError Invalid number of parts)",
        );
    }
    {
        let mut failures = shared.failures.lock();
        if failures.left > 0 && failures.table.as_deref().is_none_or(|t| t == table) {
            failures.left -= 1;
            return (
                StatusCode::from_u16(failures.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, "application/json")],
                failures.body.clone(),
            )
                .into_response();
        }
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut tables = shared.tables.lock();
    if !tables.contains_key(table.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "PGRST205",
            &format!("Could not find the table 'public.{table}' in the schema cache"),
        );
    }
    let representation = header("prefer").is_some_and(|p| p.contains("return=representation"));
    match method {
        Method::GET => select(&tables, &table, &params),
        Method::POST => {
            let rows = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(rows)) => rows,
                Ok(row @ Value::Object(_)) => vec![row],
                _ => return error(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json"),
            };
            insert(&mut tables, &table, rows, representation)
        }
        Method::PATCH => {
            let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(&body) else {
                return error(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json");
            };
            update(&mut tables, &table, &params, changes, representation)
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "PGRST117",
            "Unsupported HTTP method",
        ),
    }
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

fn insert(
    tables: &mut HashMap<&'static str, Table>,
    table: &str,
    rows: Vec<Value>,
    representation: bool,
) -> Response {
    let call_ids: Vec<Value> = tables["calls"]
        .rows
        .iter()
        .filter_map(|c| c.get("id").cloned())
        .collect();
    let target = tables.get_mut(table).expect("checked by the caller");
    let mut prepared = Vec::new();
    for row in rows {
        let Value::Object(row) = row else {
            return error(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json");
        };
        if let Some(unknown) = row.keys().find(|k| !target.columns.contains(&k.as_str())) {
            return error(
                StatusCode::BAD_REQUEST,
                "PGRST204",
                &format!("Could not find the '{unknown}' column of '{table}' in the schema cache"),
            );
        }
        let row = with_defaults(table, row, target.columns);
        if table == "transcript_turns" && !call_ids.contains(&row["call_id"]) {
            return error(
                StatusCode::CONFLICT,
                "23503",
                "insert or update on table \"transcript_turns\" violates foreign key constraint",
            );
        }
        let key: Vec<&Value> = target.primary_key.iter().map(|k| &row[*k]).collect();
        let taken =
            target
                .rows
                .iter()
                .chain(prepared.iter())
                .any(|existing: &Map<String, Value>| {
                    target
                        .primary_key
                        .iter()
                        .map(|k| &existing[*k])
                        .eq(key.iter().copied())
                });
        if taken {
            return error(
                StatusCode::CONFLICT,
                "23505",
                &format!("duplicate key value violates unique constraint \"{table}_pkey\""),
            );
        }
        prepared.push(row);
    }
    target.rows.extend(prepared.iter().cloned());
    if representation {
        rows_response(
            StatusCode::CREATED,
            prepared.into_iter().map(Value::Object).collect(),
        )
    } else {
        StatusCode::CREATED.into_response()
    }
}

fn update(
    tables: &mut HashMap<&'static str, Table>,
    table: &str,
    params: &[(String, String)],
    changes: Map<String, Value>,
    representation: bool,
) -> Response {
    let target = tables.get_mut(table).expect("checked by the caller");
    if let Some(unknown) = changes
        .keys()
        .find(|k| !target.columns.contains(&k.as_str()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "PGRST204",
            &format!("Could not find the '{unknown}' column of '{table}' in the schema cache"),
        );
    }
    let mut updated = Vec::new();
    for row in &mut target.rows {
        let mut keep = true;
        for (column, filter) in params {
            match passes(row.get(column), filter) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(message) => return error(StatusCode::BAD_REQUEST, "PGRST100", &message),
            }
        }
        if keep {
            for (column, value) in &changes {
                row.insert(column.clone(), value.clone());
            }
            updated.push(Value::Object(row.clone()));
        }
    }
    if representation {
        rows_response(StatusCode::OK, updated)
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

#[cfg(test)]
mod supabase_store_tests;
