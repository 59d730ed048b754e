//! The call flow of whatsapp-calling §7 as a sans-IO state machine: it is told what happened
//! (with `now`) and answers with the actions to take. No clock, no sockets.
//!
//! Inbound (§7.1): answer ready → `pre_accept` → media connected (or 5 s) → `accept` → media
//! starts. Outbound (§7.2): offer ready → `connect` → Meta's answer applied → media connected and
//! the callee accepted → media starts. Every end tells Meta (`reject` before the call was
//! answered, `terminate` after) unless Meta ended it.

use std::time::{Duration, Instant};

use super::{CallDirection, CallEnd};

/// After `pre_accept`, how long to wait for media before accepting anyway (§7.3).
pub const MEDIA_CONNECT_GRACE: Duration = Duration::from_secs(5);
/// How long an outbound call may ring before we give up (§7.2: a local 60 s guard).
pub const OUTBOUND_RING_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Making our SDP (answer or offer).
    Negotiating,
    /// Inbound: `pre_accept` sent. Outbound: `connect` sent.
    Signalled,
    /// Inbound: `pre_accept` succeeded, waiting for media. Outbound: ringing.
    Ringing,
    /// Inbound: `accept` sent.
    Accepting,
    /// Media flows both ways.
    Active,
    Ended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negotiating => "negotiating",
            Self::Signalled => "signalled",
            Self::Ringing => "ringing",
            Self::Accepting => "accepting",
            Self::Active => "active",
            Self::Ended => "ending",
        }
    }

    /// Compact form for sharing through an atomic.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Self {
        [
            Self::Negotiating,
            Self::Signalled,
            Self::Ringing,
            Self::Accepting,
            Self::Active,
            Self::Ended,
        ]
        .get(usize::from(value))
        .copied()
        .unwrap_or(Self::Ended)
    }
}

/// What the call task must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `pre_accept` with our answer.
    PreAccept,
    /// Send `accept` with the same answer.
    Accept,
    /// Send `connect` with our offer.
    Connect,
    /// Start sending audio (RTP at once, AI audio or encoded silence).
    StartMedia,
    /// Tell Meta we decline the call (not answered yet).
    Reject,
    /// Tell Meta we end the call.
    Terminate,
    /// Stop: the call is over.
    Finish(CallEnd),
}

/// The state of one call.
#[derive(Debug)]
pub struct CallFlow {
    direction: CallDirection,
    /// When the call began for us: the `connect` webhook's arrival, or the start of placing it.
    started: Instant,
    phase: Phase,
    /// Reject (inbound) or give up (outbound) when not active by then.
    answer_deadline: Instant,
    /// Inbound: accept even without media connected once this passes.
    media_deadline: Option<Instant>,
    media_connected: bool,
    /// Inbound: the media grace period passed; accept without connected media.
    media_waived: bool,
    /// The AI session is ready: an inbound call is accepted only then, so a caller whose AI
    /// cannot be reached is declined rather than answered into silence.
    ai_ready: bool,
    remote_accepted: bool,
    active_since: Option<Instant>,
    max_duration: Duration,
    end: Option<CallEnd>,
}

impl CallFlow {
    /// `started` is when the call began for us (the webhook's arrival for an inbound call).
    pub fn new(
        direction: CallDirection,
        started: Instant,
        answer_deadline: Duration,
        max_duration: Duration,
    ) -> Self {
        let wait = match direction {
            CallDirection::Inbound => answer_deadline,
            CallDirection::Outbound => OUTBOUND_RING_TIMEOUT,
        };
        Self {
            direction,
            started,
            phase: Phase::Negotiating,
            answer_deadline: started + wait,
            media_deadline: None,
            media_connected: false,
            media_waived: false,
            ai_ready: false,
            remote_accepted: false,
            active_since: None,
            max_duration,
            end: None,
        }
    }

    /// How long the call may last once answered.
    pub fn max_duration(&self) -> Duration {
        self.max_duration
    }

    /// An outbound call whose offer went out with `connect` at `signalled` (the call task
    /// takes it over once Meta has named it): it rings until the callee answers.
    pub fn placed(started: Instant, signalled: Instant, max_duration: Duration) -> Self {
        let mut flow = Self::new(
            CallDirection::Outbound,
            started,
            OUTBOUND_RING_TIMEOUT,
            max_duration,
        );
        flow.sdp_ready();
        flow.signalled(signalled);
        flow
    }

    pub fn direction(&self) -> CallDirection {
        self.direction
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn end_reason(&self) -> Option<CallEnd> {
        self.end
    }

    pub fn active_since(&self) -> Option<Instant> {
        self.active_since
    }

    /// Our SDP (answer or offer) is ready to send.
    pub fn sdp_ready(&mut self) -> Vec<Action> {
        if self.phase != Phase::Negotiating {
            return vec![];
        }
        self.phase = Phase::Signalled;
        match self.direction {
            CallDirection::Inbound => vec![Action::PreAccept],
            CallDirection::Outbound => vec![Action::Connect],
        }
    }

    /// `pre_accept` (inbound) or `connect` (outbound) succeeded.
    pub fn signalled(&mut self, now: Instant) -> Vec<Action> {
        if self.phase != Phase::Signalled {
            return vec![];
        }
        self.phase = Phase::Ringing;
        match self.direction {
            CallDirection::Inbound => {
                self.media_deadline = Some(now + MEDIA_CONNECT_GRACE);
                self.maybe_accept()
            }
            CallDirection::Outbound => self.maybe_activate(now),
        }
    }

    /// The PeerConnection reports connected (ICE and DTLS done).
    pub fn media_connected(&mut self, now: Instant) -> Vec<Action> {
        self.media_connected = true;
        match self.direction {
            CallDirection::Inbound => self.maybe_accept(),
            CallDirection::Outbound => self.maybe_activate(now),
        }
    }

    /// The AI session is ready (an inbound call may now be accepted).
    pub fn ai_ready(&mut self) -> Vec<Action> {
        self.ai_ready = true;
        match self.direction {
            CallDirection::Inbound => self.maybe_accept(),
            CallDirection::Outbound => vec![],
        }
    }

    /// Outbound: the callee picked up (`ACCEPTED` status).
    pub fn remote_accepted(&mut self, now: Instant) -> Vec<Action> {
        self.remote_accepted = true;
        self.maybe_activate(now)
    }

    /// Inbound: `accept` returned 200.
    pub fn accepted(&mut self, now: Instant) -> Vec<Action> {
        if self.phase != Phase::Accepting {
            return vec![];
        }
        self.activate(now)
    }

    fn maybe_accept(&mut self) -> Vec<Action> {
        if self.phase == Phase::Ringing
            && (self.media_connected || self.media_waived)
            && self.ai_ready
        {
            self.phase = Phase::Accepting;
            return vec![Action::Accept];
        }
        vec![]
    }

    fn maybe_activate(&mut self, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Ringing && self.media_connected && self.remote_accepted {
            return self.activate(now);
        }
        vec![]
    }

    fn activate(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::Active;
        self.active_since = Some(now);
        vec![Action::StartMedia]
    }

    /// The call ends for `reason`. Idempotent: only the first reason counts.
    pub fn end(&mut self, reason: CallEnd) -> Vec<Action> {
        if self.phase == Phase::Ended {
            return vec![];
        }
        let answered = matches!(self.phase, Phase::Accepting | Phase::Active);
        let signalled = !matches!(self.phase, Phase::Negotiating);
        self.phase = Phase::Ended;
        self.end = Some(reason);
        let mut actions = Vec::new();
        if reason.ended_by_bridge() {
            match self.direction {
                // An inbound call can be declined as long as it exists at Meta (it does from
                // the connect webhook on); once accepted it must be terminated.
                CallDirection::Inbound if answered => actions.push(Action::Terminate),
                CallDirection::Inbound => actions.push(Action::Reject),
                CallDirection::Outbound if signalled => actions.push(Action::Terminate),
                CallDirection::Outbound => {}
            }
        }
        actions.push(Action::Finish(reason));
        actions
    }

    /// The next instant at which [`CallFlow::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Ended => None,
            Phase::Active => self.active_since.map(|since| since + self.max_duration),
            Phase::Ringing => Some(match self.media_deadline {
                Some(media) => media.min(self.answer_deadline),
                None => self.answer_deadline,
            }),
            _ => Some(self.answer_deadline),
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Ended => vec![],
            Phase::Active => match self.active_since {
                Some(since) if now >= since + self.max_duration => self.end(CallEnd::MaxDuration),
                _ => vec![],
            },
            _ if now >= self.answer_deadline => self.end(CallEnd::AnswerTimeout),
            Phase::Ringing
                if self.direction == CallDirection::Inbound
                    && self.media_deadline.is_some_and(|deadline| now >= deadline) =>
            {
                // §7.1 step 6: accept anyway (once the AI is ready); media may still come up
                // after it.
                self.media_deadline = None;
                self.media_waived = true;
                self.maybe_accept()
            }
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(20);
    const MAX: Duration = Duration::from_secs(600);

    /// An inbound call whose AI session is ready from the start.
    fn inbound(now: Instant) -> CallFlow {
        let mut flow = CallFlow::new(CallDirection::Inbound, now, DEADLINE, MAX);
        assert!(flow.ai_ready().is_empty());
        flow
    }

    #[test]
    fn an_inbound_call_is_accepted_only_once_its_ai_is_ready_and_declined_without_it() {
        let t0 = Instant::now();
        let mut flow = CallFlow::new(CallDirection::Inbound, t0, DEADLINE, MAX);
        flow.sdp_ready();
        flow.media_connected(t0);
        assert!(flow.signalled(t0).is_empty(), "media, but no AI yet");
        assert!(flow.on_timer(t0 + MEDIA_CONNECT_GRACE).is_empty());
        assert_eq!(flow.ai_ready(), vec![Action::Accept]);

        let mut unreachable = CallFlow::new(CallDirection::Inbound, t0, DEADLINE, MAX);
        unreachable.sdp_ready();
        unreachable.media_connected(t0);
        unreachable.signalled(t0);
        assert_eq!(
            unreachable.end(CallEnd::AiFailed),
            vec![Action::Reject, Action::Finish(CallEnd::AiFailed)],
            "never answered: declined"
        );
    }

    #[test]
    fn an_inbound_call_pre_accepts_then_accepts_once_media_connects() {
        let t0 = Instant::now();
        let mut flow = inbound(t0);
        assert_eq!(flow.sdp_ready(), vec![Action::PreAccept]);
        // Media before the pre_accept answer: nothing yet.
        assert!(flow.media_connected(t0).is_empty());
        assert_eq!(flow.signalled(t0), vec![Action::Accept]);
        assert_eq!(flow.phase(), Phase::Accepting);
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(flow.accepted(t1), vec![Action::StartMedia]);
        assert_eq!(flow.active_since(), Some(t1));
    }

    #[test]
    fn media_that_never_connects_is_accepted_after_the_grace_period() {
        let t0 = Instant::now();
        let mut flow = inbound(t0);
        flow.sdp_ready();
        assert!(flow.signalled(t0).is_empty());
        assert_eq!(flow.next_deadline(), Some(t0 + MEDIA_CONNECT_GRACE));
        assert!(flow.on_timer(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            flow.on_timer(t0 + MEDIA_CONNECT_GRACE),
            vec![Action::Accept]
        );
    }

    #[test]
    fn an_unanswered_call_is_rejected_at_the_answer_deadline() {
        let t0 = Instant::now();
        let mut flow = inbound(t0);
        flow.sdp_ready();
        assert_eq!(flow.next_deadline(), Some(t0 + DEADLINE));
        assert_eq!(
            flow.on_timer(t0 + DEADLINE),
            vec![Action::Reject, Action::Finish(CallEnd::AnswerTimeout)]
        );
        assert!(flow.on_timer(t0 + DEADLINE * 2).is_empty());
    }

    #[test]
    fn an_active_call_is_terminated_at_max_duration() {
        let t0 = Instant::now();
        let mut flow = inbound(t0);
        flow.sdp_ready();
        flow.media_connected(t0);
        flow.signalled(t0);
        flow.accepted(t0);
        assert_eq!(flow.next_deadline(), Some(t0 + MAX));
        assert_eq!(
            flow.on_timer(t0 + MAX),
            vec![Action::Terminate, Action::Finish(CallEnd::MaxDuration)]
        );
    }

    #[test]
    fn a_remote_terminate_is_not_answered_with_a_terminate() {
        let t0 = Instant::now();
        let mut flow = inbound(t0);
        flow.sdp_ready();
        flow.media_connected(t0);
        flow.signalled(t0);
        flow.accepted(t0);
        assert_eq!(
            flow.end(CallEnd::RemoteTerminated),
            vec![Action::Finish(CallEnd::RemoteTerminated)]
        );
        // Only the first end counts.
        assert!(flow.end(CallEnd::AiFailed).is_empty());
        assert_eq!(flow.end_reason(), Some(CallEnd::RemoteTerminated));
    }

    #[test]
    fn a_failure_before_accept_rejects_and_after_accept_terminates() {
        let t0 = Instant::now();
        let mut before = inbound(t0);
        before.sdp_ready();
        assert_eq!(
            before.end(CallEnd::AiFailed),
            vec![Action::Reject, Action::Finish(CallEnd::AiFailed)]
        );
        let mut after = inbound(t0);
        after.sdp_ready();
        after.media_connected(t0);
        after.signalled(t0);
        assert_eq!(
            after.end(CallEnd::Shutdown),
            vec![Action::Terminate, Action::Finish(CallEnd::Shutdown)]
        );
    }

    #[test]
    fn an_outbound_call_starts_media_when_connected_and_picked_up() {
        let t0 = Instant::now();
        let mut flow = CallFlow::new(CallDirection::Outbound, t0, DEADLINE, MAX);
        assert_eq!(flow.sdp_ready(), vec![Action::Connect]);
        assert!(flow.signalled(t0).is_empty());
        assert!(flow.media_connected(t0).is_empty());
        assert_eq!(flow.remote_accepted(t0), vec![Action::StartMedia]);
        assert_eq!(
            flow.end(CallEnd::AdminHangup),
            vec![Action::Terminate, Action::Finish(CallEnd::AdminHangup)]
        );
    }

    #[test]
    fn an_outbound_call_nobody_picks_up_ends_after_the_ring_timeout() {
        let t0 = Instant::now();
        let mut flow = CallFlow::new(CallDirection::Outbound, t0, DEADLINE, MAX);
        flow.sdp_ready();
        flow.signalled(t0);
        assert_eq!(
            flow.on_timer(t0 + OUTBOUND_RING_TIMEOUT),
            vec![Action::Terminate, Action::Finish(CallEnd::AnswerTimeout)]
        );
    }
}
