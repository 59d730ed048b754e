//! A call's link to the AI: the current Realtime session and what outlives it. A session that
//! drops mid-call (close 1001/1006/1011/…, a network error, `session_expired`) is replaced: a new
//! one is opened with backoff, configured, told the conversation so far, and given the caller's
//! audio of the gap, while the caller hears silence. Before the provider's session limit a next
//! session is opened in the background and swapped in at a pause (rollover).
//!
//! Cancellation: [`AiLink::next`] runs inside the call task's `select!`, so it only polls and
//! flips state; everything that sends (the replay, the swap) is a separate call the task makes
//! from its loop body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::ai_breaker::AiBreaker;
use crate::metrics::Metrics;
use crate::realtime::backoff::Backoff;
use crate::realtime::client::{RealtimeConfig, RealtimeError, RealtimeSession};
use crate::realtime::events::{ServerEvent, Speaker};
use crate::realtime::gap::GapAudio;
use crate::realtime::history::History;

/// Attempts to replace a lost session before the call gives up on the AI.
const RECOVERY_ATTEMPTS: u32 = 6;
/// ... and the longest the caller waits for it.
const RECOVERY_BUDGET: Duration = Duration::from_secs(15);
/// Attempts to open the next session before a rollover is given up (the old one then expires
/// and is replaced like a lost one).
const ROLLOVER_ATTEMPTS: u32 = 3;
/// Gap audio goes to a new session in appends of this many samples (200 ms).
const GAP_APPEND_SAMPLES: usize = 4_800;
/// Used when the provider does not say when a session expires (§10.2: 60 minutes).
const DEFAULT_SESSION_LIMIT: Duration = Duration::from_secs(60 * 60);

/// An opening session: the caller context it was opened with, and how it went.
type Opening =
    Pin<Box<dyn Future<Output = (Arc<str>, Result<RealtimeSession, RealtimeError>)> + Send>>;

/// What a session being opened is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// The call's first session (before the call is answered).
    First,
    /// A replacement for a lost one.
    Replacement,
    /// The next one, for a rollover.
    Next,
}

struct Connecting {
    purpose: Purpose,
    future: Opening,
}

/// A session lost mid-call and being replaced.
#[derive(Debug)]
struct Recovery {
    cause: &'static str,
    since: Instant,
}

/// What [`AiLink::next`] saw.
#[derive(Debug)]
pub(super) enum LinkEvent {
    /// An event of the current session.
    Event(ServerEvent),
    /// The first session is ready.
    Ready,
    /// The session was lost and a replacement is being opened; the caller's audio is kept.
    Lost,
    /// A replacement opened: [`AiLink::finish_recovery`] gives it the conversation.
    Replaced,
    /// The next session (rollover) opened: [`AiLink::swap`] at a pause.
    NextReady,
    /// Nothing the call task needs to act on.
    Quiet,
    /// The AI cannot be reached (or refused for good): the call ends.
    Failed(RealtimeError),
}

/// The link is back after a loss.
#[derive(Debug)]
pub(super) struct Recovered {
    /// The caller's last turn had not been answered when the session went.
    pub(super) caller_unanswered: bool,
}

pub(super) struct AiLink {
    config: RealtimeConfig,
    breaker: AiBreaker,
    metrics: Metrics,
    /// What every session of this call is told about the caller (set by the first opening).
    caller_context: Arc<str>,
    session: Option<RealtimeSession>,
    /// When the current session became current, and when the provider ends it.
    session_since: Instant,
    session_expires: Option<Instant>,
    connecting: Option<Connecting>,
    /// The next session, opened and waiting for a pause.
    next: Option<RealtimeSession>,
    /// The next session could not be opened: the current one runs until it expires and is
    /// then replaced like a lost one.
    rollover_failed: bool,
    recovery: Option<Recovery>,
    history: History,
    gap: GapAudio,
    /// Bumped with each replacement: tool calls of an earlier session cannot be answered in it.
    generation: u32,
    /// The code of the session's last `error` event (`session_expired` explains the close).
    last_error_code: Option<String>,
    /// A response created and not done.
    active_response: bool,
    /// The caller finished a turn and no answer has started playing for it yet.
    caller_unanswered: bool,
}

impl AiLink {
    pub(super) fn new(config: RealtimeConfig, breaker: AiBreaker, metrics: Metrics) -> Self {
        Self {
            config,
            breaker,
            metrics,
            caller_context: Arc::from(""),
            session: None,
            session_since: Instant::now(),
            session_expires: None,
            connecting: None,
            next: None,
            rollover_failed: false,
            recovery: None,
            history: History::default(),
            gap: GapAudio::default(),
            generation: 0,
            last_error_code: None,
            active_response: false,
            caller_unanswered: false,
        }
    }

    /// Opens the first session once `context` (the caller's details, worked out on the way)
    /// is known, retrying until `deadline`.
    pub(super) fn open_first(
        &mut self,
        context: impl Future<Output = String> + Send + 'static,
        deadline: Instant,
    ) {
        let context = async move { Arc::from(context.await) };
        self.open_with(Purpose::First, context, RECOVERY_ATTEMPTS, deadline);
    }

    /// Starts opening a session for `purpose` with the call's context.
    fn open(&mut self, purpose: Purpose, attempts: u32, deadline: Instant) {
        let context = std::future::ready(self.caller_context.clone());
        self.open_with(purpose, context, attempts, deadline);
    }

    fn open_with(
        &mut self,
        purpose: Purpose,
        context: impl Future<Output = Arc<str>> + Send + 'static,
        attempts: u32,
        deadline: Instant,
    ) {
        let config = self.config.clone();
        let breaker = self.breaker.clone();
        let first = purpose == Purpose::First;
        let future = async move {
            let context = context.await;
            let backoff = Backoff::new(attempts);
            let opened = open_session(&config, &context, &breaker, backoff, deadline, first).await;
            (context, opened)
        };
        self.connecting = Some(Connecting {
            purpose,
            future: Box::pin(future),
        });
    }

    /// A session is current and not being replaced (a replacement is current, without its
    /// replay, until the recovery finishes): what is sent reaches the AI.
    pub(super) fn is_live(&self) -> bool {
        self.session.is_some() && self.recovery.is_none()
    }

    /// A response of the current session is being made.
    pub(super) fn responding(&self) -> bool {
        self.active_response
    }

    /// Counts replacements; a tool call started in an earlier generation is answered in text.
    pub(super) fn generation(&self) -> u32 {
        self.generation
    }

    /// The next thing that happens on the link. Cancellation-safe.
    pub(super) async fn next(&mut self) -> LinkEvent {
        tokio::select! {
            event = poll_session(&mut self.session) => self.on_session_event(event),
            (context, opened) = poll_connecting(&mut self.connecting) => {
                self.on_opened(context, opened)
            }
        }
    }

    fn on_session_event(&mut self, event: Option<Result<ServerEvent, RealtimeError>>) -> LinkEvent {
        match event {
            Some(Ok(event)) => {
                self.observe(&event);
                LinkEvent::Event(event)
            }
            Some(Err(error)) => self.lost(error),
            // A normal close (1000) the bridge did not ask for: not a fault to retry.
            None => self.lost(RealtimeError::Closed {
                code: Some(1000),
                reason: "the AI closed the session".to_owned(),
            }),
        }
    }

    /// Bookkeeping of the current session's events: the conversation, and whether a turn is
    /// waiting for an answer.
    fn observe(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::SpeechStopped { item_id, .. } => {
                self.history.caller_spoke(item_id);
                self.caller_unanswered = true;
            }
            ServerEvent::InputTranscriptCompleted {
                item_id,
                transcript,
            } => self.history.caller_said(item_id, transcript),
            ServerEvent::OutputTranscriptDone { transcript, .. } => {
                self.history.push(Speaker::Assistant, transcript);
            }
            ServerEvent::ResponseCreated { .. } => self.active_response = true,
            ServerEvent::AudioDelta { .. } => self.caller_unanswered = false,
            ServerEvent::ResponseDone { status, .. } => {
                self.active_response = false;
                if status == "completed" {
                    self.caller_unanswered = false;
                }
            }
            ServerEvent::Error { code, .. } => self.last_error_code.clone_from(code),
            _ => {}
        }
    }

    /// The current session failed (a read or a send): replaced when the fault is one a new
    /// session can help with, else the call ends.
    pub(super) fn lost(&mut self, error: RealtimeError) -> LinkEvent {
        self.session = None;
        self.active_response = false;
        let expired = self.last_error_code.as_deref() == Some("session_expired");
        if !(error.is_retryable() || expired) {
            return LinkEvent::Failed(error);
        }
        let cause = if expired {
            "session_expired"
        } else {
            loss_cause(&error)
        };
        warn!(%error, cause, "AI session lost; opening a new one");
        self.metrics.ai_reconnects.with_label_values(&[cause]).inc();
        self.last_error_code = None;
        // A replacement that failed in its turn keeps the first loss's start and budget.
        let since = self
            .recovery
            .as_ref()
            .map_or_else(Instant::now, |recovery| recovery.since);
        self.recovery = Some(Recovery { cause, since });
        match self.next.take() {
            // A next session opened for a rollover is as good as a replacement: it comes out
            // of `next` at once.
            Some(next) => {
                let context = self.caller_context.clone();
                self.connecting = Some(Connecting {
                    purpose: Purpose::Replacement,
                    future: Box::pin(async move { (context, Ok(next)) }),
                });
            }
            None => self.open(
                Purpose::Replacement,
                RECOVERY_ATTEMPTS,
                since + RECOVERY_BUDGET,
            ),
        }
        LinkEvent::Lost
    }

    fn on_opened(
        &mut self,
        context: Arc<str>,
        opened: Result<RealtimeSession, RealtimeError>,
    ) -> LinkEvent {
        let Some(connecting) = self.connecting.take() else {
            return LinkEvent::Quiet;
        };
        match (connecting.purpose, opened) {
            (Purpose::First, Ok(session)) => {
                self.caller_context = context;
                self.make_current(session);
                LinkEvent::Ready
            }
            (Purpose::First, Err(error)) => LinkEvent::Failed(error),
            (Purpose::Replacement, Ok(session)) => self.replaced(session),
            (Purpose::Replacement, Err(error)) => {
                self.metrics.ai_recoveries_failed.inc();
                if let Some(recovery) = self.recovery.take() {
                    warn!(
                        cause = recovery.cause,
                        waited_ms = recovery.since.elapsed().as_millis() as u64,
                        "no new AI session could be opened"
                    );
                }
                LinkEvent::Failed(error)
            }
            (Purpose::Next, Ok(session)) => {
                debug!("next AI session ready for the rollover");
                self.next = Some(session);
                LinkEvent::NextReady
            }
            (Purpose::Next, Err(error)) => {
                warn!(%error, "the next AI session could not be opened; the current one goes on until it expires");
                self.rollover_failed = true;
                LinkEvent::Quiet
            }
        }
    }

    fn make_current(&mut self, session: RealtimeSession) {
        self.session_since = Instant::now();
        self.session_expires = session.expires();
        self.session = Some(session);
        self.last_error_code = None;
        self.active_response = false;
        self.rollover_failed = false;
    }

    fn replaced(&mut self, session: RealtimeSession) -> LinkEvent {
        self.make_current(session);
        self.generation += 1;
        LinkEvent::Replaced
    }

    /// Tells a replacement what was said and gives it the caller's audio of the gap; the
    /// caller's words then flow to it again.
    pub(super) async fn finish_recovery(&mut self) -> Result<Recovered, RealtimeError> {
        let Some(session) = self.session.as_mut() else {
            return Err(RealtimeError::Closed {
                code: None,
                reason: "no session".to_owned(),
            });
        };
        let replay = self.history.replay();
        let turns = replay.len();
        for event in replay {
            session.send_text(event).await?;
        }
        let gap = self.gap.duration();
        let dropped = self.gap.dropped();
        let audio = self.gap.take();
        for chunk in audio.chunks(GAP_APPEND_SAMPLES) {
            session.send_audio(chunk).await?;
        }
        let recovery = self.recovery.take();
        let waited = recovery
            .as_ref()
            .map_or(Duration::ZERO, |recovery| recovery.since.elapsed());
        self.metrics
            .ai_recovery_seconds
            .observe(waited.as_secs_f64());
        info!(
            cause = recovery.as_ref().map_or("", |recovery| recovery.cause),
            recovery_ms = waited.as_millis() as u64,
            turns,
            gap_audio_ms = gap.as_millis() as u64,
            gap_audio_dropped_ms = dropped.as_millis() as u64,
            session_id = session.session_id(),
            "AI session recovered with the conversation so far"
        );
        Ok(Recovered {
            caller_unanswered: std::mem::take(&mut self.caller_unanswered),
        })
    }

    /// Caller audio: to the AI when a session is live, kept for the next one while recovering.
    pub(super) async fn send_audio(&mut self, pcm: &[i16]) -> Result<(), RealtimeError> {
        if self.recovery.is_some() {
            self.gap.push(pcm);
            return Ok(());
        }
        match self.session.as_mut() {
            Some(session) => session.send_audio(pcm).await,
            None => Ok(()),
        }
    }

    /// A client event for the current session; dropped (`Ok(false)`) when there is none (it
    /// would name items or calls a new session does not know).
    pub(super) async fn send_text(&mut self, event: String) -> Result<bool, RealtimeError> {
        if !self.is_live() {
            debug!(
                event = event.get(..40).unwrap_or(&event),
                "no live AI session: event dropped"
            );
            return Ok(false);
        }
        match self.session.as_mut() {
            Some(session) => session.send_text(event).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Notes something for the conversation that the AI should know in later sessions too.
    pub(super) fn note(&mut self, text: &str) {
        self.history.push(Speaker::System, text);
    }

    /// Notes something the caller did other than speak (a keypress), for later sessions too.
    pub(super) fn caller_pressed(&mut self, text: &str) {
        self.history.push(Speaker::User, text);
    }

    /// When the rollover should start: a fifth of the session's life before its end (at most
    /// five minutes before), and when it must happen even without a pause.
    fn rollover_times(&self) -> (Instant, Instant) {
        let expires = self
            .session_expires
            .unwrap_or(self.session_since + DEFAULT_SESSION_LIMIT);
        let life = expires.saturating_duration_since(self.session_since);
        let start = expires - (life / 5).min(Duration::from_secs(300));
        let force = expires - (life / 20).min(Duration::from_secs(30));
        (start, force)
    }

    /// The instant the call task should next look at the rollover (its timer).
    pub(super) fn rollover_deadline(&self) -> Option<Instant> {
        if self.session.is_none() || self.recovery.is_some() || self.rollover_failed {
            return None;
        }
        let (start, force) = self.rollover_times();
        match (&self.connecting, &self.next) {
            (None, None) => Some(start),
            (_, Some(_)) => Some(force),
            (Some(_), None) => None,
        }
    }

    /// Opens the next session when the current one nears its end.
    pub(super) fn maybe_start_rollover(&mut self, now: Instant) {
        if !self.is_live()
            || self.connecting.is_some()
            || self.next.is_some()
            || self.rollover_failed
        {
            return;
        }
        let (start, force) = self.rollover_times();
        if now >= start {
            info!(
                session_age_s = now.duration_since(self.session_since).as_secs(),
                "AI session nears its limit: opening the next one"
            );
            self.open(Purpose::Next, ROLLOVER_ATTEMPTS, force);
        }
    }

    /// A next session is open and waits to be swapped in.
    pub(super) fn next_waiting(&self) -> bool {
        self.next.is_some()
    }

    /// Whether the waiting next session goes in now: `at_pause`, or late and at least `quiet`
    /// (nobody speaking, no response being made: a turn split between two sessions would be
    /// lost). Without even that, the session expires and is replaced like a lost one.
    pub(super) fn swap_due(&self, now: Instant, at_pause: bool, quiet: bool) -> bool {
        let late = now >= self.rollover_times().1;
        self.next.is_some() && self.is_live() && (at_pause || (late && quiet))
    }

    /// Swaps the next session in: it is told the conversation, then takes the caller's audio;
    /// the old one is closed (1000) in the background.
    pub(super) async fn swap(&mut self, at_pause: bool) {
        let Some(mut next) = self.next.take() else {
            return;
        };
        for event in self.history.replay() {
            if let Err(error) = next.send_text(event).await {
                warn!(%error, "the next AI session failed before the rollover");
                self.rollover_failed = true;
                return;
            }
        }
        let how = if at_pause { "at_pause" } else { "forced" };
        self.metrics.ai_rollovers.with_label_values(&[how]).inc();
        info!(
            how,
            session_id = next.session_id(),
            "AI session rolled over with the conversation so far"
        );
        let old = self.session.take();
        self.make_current(next);
        self.generation += 1;
        if let Some(mut old) = old {
            // Bounded by the client's close grace (1 s).
            tokio::spawn(async move { old.close().await });
        }
    }

    /// Closes whatever sessions are open (the end of the call).
    pub(super) async fn close(&mut self) {
        self.connecting = None;
        if let Some(mut next) = self.next.take() {
            next.close().await;
        }
        if let Some(mut session) = self.session.take() {
            session.close().await;
        }
    }
}

/// Opens a session, retrying retryable failures with `backoff` (or the provider's
/// `Retry-After`) while the next attempt can still start before `deadline`. Every attempt's
/// outcome goes to the breaker. The first session of a call (`first`) is tried at once, and
/// given up as soon as the breaker opens (the caller is declined rather than kept ringing);
/// a live call's replacement waits its jitter and uses all its attempts.
async fn open_session(
    config: &RealtimeConfig,
    context: &str,
    breaker: &AiBreaker,
    mut backoff: Backoff,
    deadline: Instant,
    first: bool,
) -> Result<RealtimeSession, RealtimeError> {
    let mut retry_after = None;
    let mut last_error = None;
    while let Some(mut delay) = backoff.next_delay(retry_after) {
        if backoff.attempts() == 1 && first {
            delay = Duration::ZERO;
        }
        let starts = Instant::now() + delay;
        if starts >= deadline {
            break;
        }
        tokio::time::sleep_until(starts.into()).await;
        let mut attempt = config.clone();
        attempt.connect_timeout = config
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match RealtimeSession::connect(&attempt, context).await {
            Ok(session) => {
                breaker.record_success();
                return Ok(session);
            }
            Err(error) => {
                breaker.record_failure(&error);
                warn!(attempt = backoff.attempts(), %error, "opening an AI session failed");
                if !error.is_retryable() || (first && breaker.is_open()) {
                    return Err(error);
                }
                retry_after = match &error {
                    RealtimeError::Handshake { retry_after, .. } => *retry_after,
                    _ => None,
                };
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or(RealtimeError::Timeout("a session within the deadline")))
}

/// The metrics label of a lost session.
fn loss_cause(error: &RealtimeError) -> &'static str {
    match error {
        RealtimeError::Closed {
            code: Some(code), ..
        } => match code {
            1001 => "close_1001",
            1005 => "close_1005",
            1006 => "close_1006",
            1011 => "close_1011",
            1012 => "close_1012",
            1013 => "close_1013",
            1015 => "close_1015",
            _ => "close_other",
        },
        RealtimeError::Closed { code: None, .. } | RealtimeError::Io(_) => "network",
        RealtimeError::Timeout(_) => "timeout",
        RealtimeError::Server { .. } => "server_error",
        RealtimeError::Handshake { .. } | RealtimeError::Protocol(_) => "other",
    }
}

async fn poll_session(
    session: &mut Option<RealtimeSession>,
) -> Option<Result<ServerEvent, RealtimeError>> {
    match session.as_mut() {
        Some(session) => session.next_event().await,
        None => std::future::pending().await,
    }
}

async fn poll_connecting(
    connecting: &mut Option<Connecting>,
) -> (Arc<str>, Result<RealtimeSession, RealtimeError>) {
    match connecting.as_mut() {
        Some(connecting) => (&mut connecting.future).await,
        None => std::future::pending().await,
    }
}
