//! A local Graph API stand-in for the client's unit tests: records every request and answers
//! from a script (then 200 `{"success":true}`). The wing's faithful double is not reachable from
//! the core; these tests check what the client sends and how it reads answers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use secrecy::SecretString;
use serde_json::Value;

use super::{GraphClient, GraphConfig};

pub(crate) const TOKEN: &str = "test-token-never-logged";
pub(crate) const SUCCESS: &str = r#"{"messaging_product":"whatsapp","success":true}"#;

/// What the test server saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// The raw query string, if any.
    pub(crate) query: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) content_type: Option<String>,
    /// The JSON body; `Null` when there was none.
    pub(crate) body: Value,
}

/// The scripted answers and the requests seen.
#[derive(Default)]
pub(crate) struct Script {
    responses: Mutex<VecDeque<(u16, String)>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
}

impl Script {
    /// The one request seen so far.
    pub(crate) fn only_request(&self) -> Seen {
        let seen = self.seen.lock();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen[0].clone()
    }
}

async fn record(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    script.seen.lock().push(Seen {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let (status, body) = script
        .responses
        .lock()
        .pop_front()
        .unwrap_or((200, SUCCESS.to_owned()));
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A server answering `responses` in order, and a client of it.
pub(crate) async fn server(responses: &[(u16, &str)]) -> (GraphClient, Arc<Script>) {
    let script = Arc::new(Script::default());
    script
        .responses
        .lock()
        .extend(responses.iter().map(|(s, b)| (*s, (*b).to_owned())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(record).with_state(script.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (client(&format!("http://{addr}/")), script)
}

/// A client of the business number of the spec's fixtures at `base_url`.
pub(crate) fn client(base_url: &str) -> GraphClient {
    GraphClient::new(GraphConfig {
        base_url: base_url.to_owned(),
        version: "v23.0".to_owned(),
        phone_number_id: "106540352242922".to_owned(),
        access_token: SecretString::from(TOKEN),
        timeout: Duration::from_secs(5),
    })
}
