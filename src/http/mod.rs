//! The HTTP surface: the signed WhatsApp webhook, `/health` and `/metrics`.

mod webhook;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::call::task::CallContext;
use crate::media::ports::PortPool;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Webhook bodies above this are refused with 413 before anything else (Meta batches up to
/// 1000 updates, far below it).
pub const WEBHOOK_BODY_LIMIT: usize = 1 << 20;

/// What the webhook needs to check and route deliveries.
pub struct WebhookSettings {
    pub app_secret: SecretString,
    pub verify_token: SecretString,
    /// Deliveries for other numbers are acknowledged and ignored.
    pub phone_number_id: String,
}

/// Shared state of every handler; a cheap clone of `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub webhook: Arc<WebhookSettings>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub calls: CallContext,
    /// Every call task (and every end-of-call Graph request) is spawned on it.
    pub tracker: TaskTracker,
    pub ports: Option<PortPool>,
    pub started: Instant,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook", get(webhook::verify).post(webhook::receive))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let active = state.registry.active_calls();
    let max = state.registry.max_calls();
    let status = if state.registry.is_draining() {
        "draining"
    } else {
        "healthy"
    };
    Json(json!({
        "status": status,
        "active_calls": active,
        "max_calls": max,
        "capacity_used_percent": capacity_percent(active, max),
    }))
}

fn capacity_percent(active: usize, max: usize) -> f64 {
    if max == 0 {
        return 100.0;
    }
    ((active as f64 / max as f64) * 1000.0).round() / 10.0
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A JSON error body with a status, for the few error answers of the webhook.
fn error_response(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::capacity_percent;

    #[test]
    fn capacity_is_a_percentage_with_one_decimal() {
        assert_eq!(capacity_percent(0, 100), 0.0);
        assert_eq!(capacity_percent(1, 3), 33.3);
        assert_eq!(capacity_percent(3, 3), 100.0);
    }
}
