//! The AI circuit breaker, shared by every call of the process: after `threshold` failed
//! attempts in a row to open an AI session (any call's, or the prober's), the AI counts as
//! unavailable and new calls are refused at once (`reject`, 503 `ai_unavailable`) instead of
//! each ringing on while it retries a dead provider. While open, [`run_prober`] tries a session
//! every `probe_interval`; one that opens (a probe's, or a live call's reconnect) closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::realtime::client::{RealtimeConfig, RealtimeError, RealtimeSession};

/// Shared by all calls; cheap to clone.
#[derive(Clone)]
pub struct AiBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Failures in a row that open it; 0: never opens.
    threshold: u32,
    state: Mutex<State>,
    /// `true` while open (the prober waits on it).
    open: watch::Sender<bool>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    opened_at: Option<Instant>,
    last_error: Option<String>,
}

/// What `/health` shows of the breaker.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BreakerStatus {
    /// `closed` (calls are answered) or `open` (refused until a session opens again).
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// How long it has been open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for_seconds: Option<u64>,
    /// The latest failure, while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl AiBreaker {
    pub fn new(threshold: u32, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                threshold,
                state: Mutex::new(State::default()),
                open: watch::Sender::new(false),
                metrics,
            }),
        }
    }

    /// New calls are refused while this holds.
    pub fn is_open(&self) -> bool {
        *self.inner.open.borrow()
    }

    /// An AI session opened: the AI is there.
    pub fn record_success(&self) {
        let mut state = self.inner.state.lock();
        state.failures_in_a_row = 0;
        state.last_error = None;
        if let Some(opened_at) = state.opened_at.take() {
            info!(
                open_for_ms = opened_at.elapsed().as_millis() as u64,
                "AI reachable again: circuit breaker closed, calls are answered"
            );
            self.inner.metrics.ai_breaker_open.set(0);
            self.inner.open.send_replace(false);
        }
    }

    /// An attempt to open an AI session failed with `error`.
    pub fn record_failure(&self, error: &RealtimeError) {
        self.inner
            .metrics
            .ai_connect_failures
            .with_label_values(&[connect_failure_cause(error)])
            .inc();
        let mut state = self.inner.state.lock();
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        state.last_error = Some(error.to_string());
        let threshold = self.inner.threshold;
        if threshold > 0 && state.failures_in_a_row >= threshold && state.opened_at.is_none() {
            state.opened_at = Some(Instant::now());
            warn!(
                failures = state.failures_in_a_row,
                %error,
                "AI unreachable: circuit breaker open, new calls are refused until it answers again"
            );
            self.inner.metrics.ai_breaker_open.set(1);
            self.inner.open.send_replace(true);
        }
    }

    pub fn status(&self) -> BreakerStatus {
        let state = self.inner.state.lock();
        BreakerStatus {
            state: if state.opened_at.is_some() {
                "open"
            } else {
                "closed"
            },
            consecutive_failures: state.failures_in_a_row,
            open_for_seconds: state.opened_at.map(|at| at.elapsed().as_secs()),
            last_error: state.opened_at.and(state.last_error.clone()),
        }
    }

    /// Waits until the breaker is open.
    async fn opened(&self) {
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

/// The metrics label of a failed attempt.
pub fn connect_failure_cause(error: &RealtimeError) -> &'static str {
    match error {
        RealtimeError::Handshake {
            status: Some(429), ..
        } => "http_429",
        RealtimeError::Handshake {
            status: Some(500..=599),
            ..
        } => "http_5xx",
        RealtimeError::Handshake {
            status: Some(_), ..
        } => "http_4xx",
        RealtimeError::Handshake { status: None, .. } => "configuration",
        RealtimeError::Timeout(_) => "timeout",
        RealtimeError::Io(_) => "network",
        RealtimeError::Closed { .. } => "closed",
        RealtimeError::Server { .. } => "server_error",
        RealtimeError::Protocol(_) => "protocol",
    }
}

/// While the breaker is open, opens (and closes again) a session every `interval`; the first
/// that opens closes the breaker. Ends with `shutdown`.
pub async fn run_prober(
    breaker: AiBreaker,
    config: RealtimeConfig,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = breaker.opened() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !breaker.is_open() {
            continue;
        }
        debug!("probing the AI");
        match RealtimeSession::connect(&config, "").await {
            Ok(mut session) => {
                breaker.record_success();
                session.close().await;
            }
            Err(error) => breaker.record_failure(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> RealtimeError {
        RealtimeError::Handshake {
            status: Some(status),
            message: "down".into(),
            retry_after: None,
        }
    }

    #[test]
    fn it_opens_after_the_threshold_of_failures_in_a_row_and_a_success_closes_it() {
        let metrics = Metrics::new();
        let breaker = AiBreaker::new(3, metrics.clone());
        breaker.record_failure(&refused(503));
        breaker.record_failure(&refused(503));
        breaker.record_success();
        breaker.record_failure(&refused(429));
        breaker.record_failure(&RealtimeError::Io("refused".into()));
        assert!(!breaker.is_open(), "a success in between resets the count");
        assert_eq!(breaker.status().consecutive_failures, 2);
        breaker.record_failure(&refused(503));
        assert!(breaker.is_open());
        let status = breaker.status();
        assert_eq!(status.state, "open");
        assert!(status.last_error.unwrap().contains("503"));
        let rendered = metrics.render();
        assert!(rendered.contains("whatsapp_bridge_ai_breaker_open 1"));
        assert!(
            rendered.contains("whatsapp_bridge_ai_connect_failures_total{cause=\"http_5xx\"} 3")
        );
        assert!(
            rendered.contains("whatsapp_bridge_ai_connect_failures_total{cause=\"http_429\"} 1")
        );
        assert!(
            rendered.contains("whatsapp_bridge_ai_connect_failures_total{cause=\"network\"} 1")
        );
        breaker.record_success();
        assert!(!breaker.is_open());
        assert_eq!(breaker.status().state, "closed");
        assert!(
            metrics
                .render()
                .contains("whatsapp_bridge_ai_breaker_open 0")
        );
    }

    #[test]
    fn a_threshold_of_zero_never_opens() {
        let breaker = AiBreaker::new(0, Metrics::new());
        for _ in 0..100 {
            breaker.record_failure(&refused(503));
        }
        assert!(!breaker.is_open());
    }
}
