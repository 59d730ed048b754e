//! The HTTP surface: the signed WhatsApp webhook, `/health`, `/ready`, `/metrics` and the
//! admin calls API, and the listeners' bounded connections (`server`).

mod admin;
mod body_deadline;
mod conn_clock;
pub mod server;
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

use crate::call::calls::Calls;
use crate::metrics::Metrics;
use crate::outreach::Outreach;

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
    /// Admission and the live calls (one `Arc` inside: axum clones the state for every request).
    pub calls: Calls,
    pub metrics: Metrics,
    pub started: Instant,
    /// Bearer token of the admin API; `None`: its routes do not exist (404).
    pub admin_token: Option<SecretString>,
    /// Calls and messages to users (callbacks, the busy callback).
    pub outreach: Outreach,
}

/// The main router. `/metrics` is on it unless `metrics_separately` (then see
/// [`metrics_router`]).
pub fn router(state: AppState, metrics_separately: bool) -> Router {
    let mut router = Router::new()
        .route("/webhook", get(webhook::verify).post(webhook::receive))
        .route("/health", get(health))
        .route("/ready", get(ready));
    if !metrics_separately {
        router = router.route("/metrics", get(metrics));
    }
    if state.admin_token.is_some() {
        router = router
            .route("/calls", get(admin::list_calls).post(admin::place_call))
            .route("/calls/{id}", axum::routing::delete(admin::hang_up))
            .route(
                "/callers/{number}/data",
                axum::routing::delete(admin::forget_caller),
            )
            .route("/blocked", get(admin::list_blocked))
            .route(
                "/blocked/{number}",
                axum::routing::put(admin::block).delete(admin::unblock),
            );
    }
    router
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(state)
}

/// `/metrics` alone, for `METRICS_PORT`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness: 200 while the process serves. `capacity` is what this replica can carry now
/// (`max_calls`, or fewer when its measured headroom says so; `headroom` shows the figures).
/// With a fleet it also reports the fleet's live calls (as of the last heartbeat, so this
/// stays fast) beside this replica's.
async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let registry = state.calls.registry();
    let active = registry.active_calls();
    let max = registry.max_calls();
    let capacity = registry.capacity();
    let status = if registry.is_draining() {
        "draining"
    } else {
        "healthy"
    };
    let mut body = json!({
        "status": status,
        "active_calls": active,
        "max_calls": max,
        "capacity": capacity,
        "capacity_used_percent": capacity_percent(active, capacity),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "ai": state.calls.context().ai_breaker.status(),
        "headroom": registry.headroom().status(active),
    });
    if let Some(fleet) = state.calls.fleet() {
        let cluster = fleet.cluster();
        body["replica"] = json!(fleet.replica());
        body["cluster"] = json!({
            "replicas": cluster.replicas,
            "active_calls": cluster.active_calls,
            "max_calls": cluster.max_calls,
            "redis": if cluster.degraded { "degraded" } else { "ok" },
        });
    }
    Json(body)
}

/// Readiness means "send me webhooks": 503 only while draining. A full replica stays ready: it
/// must still get the `terminate`s of its own calls, and it refuses a new call itself (with
/// `reject`), which a load balancer could not do.
async fn ready(State(state): State<AppState>) -> Response {
    let registry = state.calls.registry();
    let (status, reason) = if registry.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    (
        status,
        Json(json!({
            "status": reason,
            "active_calls": registry.active_calls(),
            "max_calls": registry.max_calls(),
        })),
    )
        .into_response()
}

fn capacity_percent(active: usize, max: usize) -> f64 {
    if max == 0 {
        return 100.0;
    }
    ((active as f64 / max as f64) * 1000.0).round() / 10.0
}

async fn metrics(State(state): State<AppState>) -> Response {
    observe_at_scrape(&state);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Sets the gauges that are read when scraped rather than kept up to date: the tokio
/// runtime's alive tasks and the sizes of the call registry's maps (a soak run compares them
/// before and after to find leaks).
fn observe_at_scrape(state: &AppState) {
    let metrics = &state.metrics;
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    metrics.runtime_alive_tasks.set(alive as i64);
    let sizes = state.calls.registry().sizes();
    for (map, entries) in [
        ("calls", sizes.calls),
        ("phones", sizes.phones),
        ("tombstones", sizes.tombstones),
        ("reserved", sizes.reserved),
        ("early_commands", sizes.early_commands),
    ] {
        metrics
            .registry_entries
            .with_label_values(&[map])
            .set(entries as i64);
    }
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
