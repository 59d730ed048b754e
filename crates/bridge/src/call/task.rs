//! The call task: one per call, sole owner of the call's PeerConnection, AI session, both
//! directions of its media and its timers. One `select!` loop drives it; everything with timing
//! is decided by the sans-IO [`CallFlow`] and [`Downlink`]. Others reach the call only through its
//! [`CallHandle`](crate::call::registry::CallHandle).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::ai_breaker::AiBreaker;
use super::ai_link::{AiLink, LinkEvent};
use super::block_list::BlockList;
use super::caller_limits::CallerLimits;
use super::fec::DownlinkFec;
use super::flow::{Action, CallFlow};
use super::headroom::Headroom;
use super::journal::Journal;
use super::keypresses::KeyEntry;
use super::registry::Admission;
use super::tool_calls::{Send as ToolSend, ToolCalls};
use super::{CallCommand, CallDirection, CallEnd};
use crate::ids::{CallId, LogSafe, PhoneNumber};
use crate::local_time;
use crate::media::codec::{EncoderSettings, SAMPLES_PER_FRAME, StreamEncoder};
use crate::media::downlink::{Downlink, OutgoingFrame};
use crate::media::keypad::{KeypadDecoder, pressed_text};
use crate::media::loss_protection::{DEFAULT_OFF_AFTER, LossProtection, LossProtectionSettings};
use crate::media::peer::{
    MediaPeer, OPUS_PAYLOAD_TYPE, PeerEvent, PeerProfile, PeerSettings, RtpPacket,
    TELEPHONE_EVENT_PAYLOAD_TYPE,
};
use crate::media::phases::FramePhases;
use crate::media::ports::PortLease;
use crate::media::uplink::UplinkDecoder;
use crate::memory::{self, MemorySettings};
use crate::metrics::{Metrics, ai_error_code_label};
use crate::realtime::client::{AI_TEXT_CHARS, RealtimeConfig, RealtimeError};
use crate::realtime::events::{self, ServerEvent, Speaker};
use crate::store::{CallLogDirection, CallOutcome, CallRecord, Role, Store};
use crate::tools::{self, ForgetMe, ForgetStep, ToolLimits, ToolOutcome, ToolResult};
use crate::whatsapp::graph::{GraphAction, GraphClient, GraphError};
use crate::whatsapp::sdp;

/// Bound on the `reject`/`terminate` sent at the end (the client retries inside it).
const END_SIGNAL_TIMEOUT: Duration = Duration::from_secs(12);
/// Bound on closing the AI socket and the PeerConnection at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a response the AI failed (realtime §10.3), the wait before asking it once more.
const RESPONSE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// After the AI's `end_call`, the longest the bridge waits for its goodbye to play out.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long before `MAX_CALL_DURATION` the AI tells the caller the call is about to end (at
/// most a third of the maximum).
const DURATION_WARNING_BEFORE: Duration = Duration::from_secs(30);
/// ... and what it is asked to say.
const DURATION_WARNING: &str = "The call reaches its time limit in a few seconds: tell the caller in one short sentence that the call is about to end, and thank them.";
/// What the AI is asked when nobody has spoken for `IDLE_TIMEOUT`.
const IDLE_PROMPT: &str =
    "Nobody has said anything for a while: ask briefly whether the caller is still there.";
/// ... and after as long again.
const IDLE_GOODBYE: &str =
    "The caller seems to have gone: say a short goodbye; the call ends after it.";
/// What the AI is asked to say when a response failed twice in a row.
const APOLOGY: &str = "Apologise in one short sentence for the trouble hearing the caller and ask them to say that again.";

/// What every call shares: clients, settings and metrics. Cheap to clone.
#[derive(Clone)]
pub struct CallContext {
    pub graph: GraphClient,
    pub realtime: RealtimeConfig,
    pub peer: PeerSettings,
    pub encoder: EncoderSettings,
    pub metrics: Metrics,
    pub answer_deadline: Duration,
    pub max_call_duration: Duration,
    /// Instructions for the AI's first words once the call is answered; `None`: wait for the caller.
    pub greeting: Option<String>,
    /// The AI's first audio is held this long after media starts (`GREETING_LEAD`).
    pub greeting_lead: Duration,
    /// Tasks, reminders, call log and transcripts.
    pub store: Arc<dyn Store>,
    pub memory: MemorySettings,
    /// A tool call that takes longer is answered with an error output.
    pub tool_timeout: Duration,
    /// No speech either way for this long: a prompt, then (as long again) the end.
    pub idle_timeout: Option<Duration>,
    /// Spreads the calls' 20 ms frame work over the period.
    pub frame_phases: FramePhases,
    /// Whether the AI can be reached (shared by every call).
    pub ai_breaker: AiBreaker,
    /// The numbers the business neither answers nor calls.
    pub block_list: BlockList,
    /// Per-caller quotas of inbound calls; an inbound call's answered time is counted at its end.
    pub caller_limits: CallerLimits,
    /// What one caller may keep in the store (open tasks, pending reminders).
    pub tool_limits: ToolLimits,
    /// Tool calls per call (0: no limit); past it each is answered with an error.
    pub tool_calls_per_call: u32,
    /// Where every call's frame send delay goes for admission by headroom.
    pub headroom: Headroom,
}

/// The first AI session must be open this long before the answer deadline, so that a caller
/// whose AI cannot be reached is still declined in time.
const AI_OPEN_MARGIN: Duration = Duration::from_millis(500);
type GraphOp = Pin<Box<dyn Future<Output = (GraphAction, Result<(), GraphError>)> + Send>>;

/// Ends a call that could not even be set up: Meta is told, the end is counted.
pub(super) async fn fail_before_start(
    context: &CallContext,
    admission: &Admission,
    mut flow: CallFlow,
) {
    let actions = flow.end(CallEnd::SetupFailed);
    signal_end(&context.graph, admission.call_id(), &actions).await;
    record_end(&context.metrics, &flow);
}

/// What became of a call the bridge placed, for whoever placed it (a reminder's delivery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacedOutcome {
    /// The callee answered and the AI's opening (the reminder) was spoken and played out to
    /// the phone; the call goes on.
    OpeningHeard,
    /// The call ended before that: `answered` tells whether the callee had picked up.
    Ended { end: CallEnd, answered: bool },
}

/// An outbound call's opening: whether the AI has said it and it has played out.
#[derive(Debug, Default)]
struct Opening {
    /// Reported (or nobody listens): nothing more to do.
    reporter: Option<oneshot::Sender<PlacedOutcome>>,
    /// `response.create` for the opening was sent; its response is the next one created.
    requested: bool,
    response_id: Option<String>,
    /// The opening's response is done: once its audio has played out it was heard.
    generated: bool,
}

/// The AI asked to end the call (`end_call`): the call ends once the goodbye that follows has
/// played out at the phone.
#[derive(Debug)]
struct Ending {
    /// Past this, the call ends whatever was said.
    deadline: Instant,
    /// The response that called `end_call` (`None`: the bridge ended it); the goodbye is a
    /// later one.
    calling_response: Option<String>,
    /// The goodbye's response is done: the call ends when its audio has played.
    goodbye_done: bool,
    /// Why the call ends (`ai_ended`, `idle_timeout`).
    reason: CallEnd,
}

/// Whether anyone has spoken lately (`IDLE_TIMEOUT`).
#[derive(Debug)]
struct Idle {
    /// The caller's or the AI's last speech (the AI's counts while it plays at the phone).
    last_speech: Instant,
    /// The AI has asked whether the caller is still there.
    prompted: bool,
    /// Between the AI's VAD saying the caller started and stopped speaking.
    caller_speaking: bool,
}

/// Everything one call owns while it runs.
pub(super) struct CallTask {
    context: Arc<CallContext>,
    admission: Admission,
    commands: mpsc::Receiver<CallCommand>,
    flow: CallFlow,
    peer: MediaPeer,
    /// Our answer, byte-identical in `pre_accept` and `accept` (§5.2).
    answer_sdp: Arc<String>,
    /// Outbound: Meta's answer has been applied (it can arrive twice through the fleet).
    answer_applied: bool,
    /// The AI session, replaced when it drops and before it expires.
    ai: AiLink,
    graph_op: Option<GraphOp>,
    uplink: UplinkDecoder,
    uplink_pcm: Vec<i16>,
    /// The AI's voice toward the caller: queue, pacer, encoder, RTP numbering.
    downlink: Downlink,
    /// The frames due at one poll of the downlink (reused).
    outgoing: Vec<OutgoingFrame>,
    /// In-band FEC toward the caller while the caller reports loss.
    fec: DownlinkFec,
    /// What the AI is asked to say first once media flows (`None`: it waits for the caller).
    greeting: Option<String>,
    greeted: bool,
    concealed_seen: u64,
    fec_recovered_seen: u64,
    /// The caller's keypresses, and when the AI answers them.
    keypad: KeypadDecoder,
    keys: KeyEntry,
    /// When the AI's VAD last said the caller stopped speaking, until its answer's first audio.
    speech_stopped_at: Option<Instant>,
    /// The call log and transcript writer; taken at the end.
    journal: Option<Journal>,
    tool_calls: ToolCalls,
    /// Running tools; aborted if the call ends first.
    tool_runs: JoinSet<ToolRun>,
    /// The caller's "forget me" on this call: asked, then confirmed.
    forget_me: ForgetMe,
    /// This call's handles on the per-frame counters (looked up once, not per frame).
    frames_in: prometheus::IntCounter,
    frames_out: prometheus::IntCounter,
    /// Outbound: tells the placer when the opening was heard, or how the call ended.
    opening: Opening,
    /// Responses the AI failed in a row (reset by one that completes).
    failed_responses: u32,
    /// When to ask the AI again after a failed response (cleared when the caller speaks).
    response_retry_at: Option<Instant>,
    /// The failed response was the opening: the retry asks for the opening again.
    retry_opening: bool,
    /// Set once the AI called `end_call`, or the call went idle twice.
    ending: Option<Ending>,
    idle: Idle,
    /// The caller was told the call is about to reach its maximum duration.
    duration_warned: bool,
    /// Tool calls the AI made in this call (for `TOOL_CALLS_PER_CALL`).
    tool_calls_made: u32,
}

/// The media side of a call before it has a task: the PeerConnection and both codecs.
pub(super) struct CallMedia {
    pub(super) peer: MediaPeer,
    uplink: UplinkDecoder,
    encoder: StreamEncoder,
    loss_protection: LossProtection,
}

/// The most the phone takes when its SDP does not say (Meta offers 20 kbit/s, §8.1).
const PHONE_MAX_BITRATE: u32 = 20_000;

impl CallMedia {
    /// `caller_max_bitrate`: the caller's `maxaveragebitrate`, when its SDP states one.
    pub(super) async fn new(
        context: &CallContext,
        port: Option<PortLease>,
        caller_sends_fec: bool,
        caller_max_bitrate: Option<u32>,
    ) -> Result<Self, String> {
        let uplink = UplinkDecoder::new(caller_sends_fec).map_err(|e| e.to_string())?;
        let encoder = StreamEncoder::new(context.encoder).map_err(|e| e.to_string())?;
        let peer = MediaPeer::new(&context.peer, PeerProfile::Bridge, port)
            .await
            .map_err(|e| e.to_string())?;
        let max_bitrate = caller_max_bitrate.unwrap_or(PHONE_MAX_BITRATE);
        let loss_protection = LossProtection::new(
            LossProtectionSettings {
                plain: context.encoder,
                max_bitrate_bps: i32::try_from(max_bitrate).unwrap_or(i32::MAX),
                off_after: DEFAULT_OFF_AFTER,
            },
            peer.ssrc(),
        );
        // The stream starts unprotected: nothing has been reported lost yet.
        let mut encoder = encoder;
        encoder
            .set_fec(loss_protection.current())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            peer,
            uplink,
            encoder,
            loss_protection,
        })
    }
}

/// How answering the offer ended.
enum Early {
    Answered(Result<String, crate::media::peer::PeerError>),
    AiFailed(RealtimeError),
    Ended(CallEnd),
}

impl CallTask {
    pub(super) fn new(
        context: Arc<CallContext>,
        admission: Admission,
        commands: mpsc::Receiver<CallCommand>,
        flow: CallFlow,
        media: CallMedia,
        greeting: Option<String>,
        reminder_id: Option<String>,
    ) -> Self {
        let direction = match flow.direction() {
            CallDirection::Inbound => CallLogDirection::Inbound,
            CallDirection::Outbound => CallLogDirection::Outbound,
        };
        let mut record = CallRecord::started(
            admission.call_id().clone(),
            admission.phone().cloned(),
            direction,
            wall_clock(flow.started()),
        );
        record.reminder_id = reminder_id;
        let journal = Journal::start(context.store.clone(), record, context.metrics.clone());
        let frames_in = context.metrics.audio_frames.with_label_values(&["in"]);
        let frames_out = context.metrics.audio_frames.with_label_values(&["out"]);
        let fec = DownlinkFec::new(media.loss_protection, &context.metrics);
        let ai = AiLink::new(
            context.realtime.clone(),
            context.ai_breaker.clone(),
            context.metrics.clone(),
        );
        let mut task = Self {
            context,
            admission,
            commands,
            flow,
            peer: media.peer,
            answer_sdp: Arc::new(String::new()),
            answer_applied: false,
            ai,
            graph_op: None,
            uplink: media.uplink,
            uplink_pcm: Vec::with_capacity(SAMPLES_PER_FRAME * 8),
            downlink: Downlink::new(media.encoder, rand::random(), rand::random()),
            outgoing: Vec::with_capacity(4),
            fec,
            greeting,
            greeted: false,
            concealed_seen: 0,
            fec_recovered_seen: 0,
            keypad: KeypadDecoder::default(),
            keys: KeyEntry::default(),
            speech_stopped_at: None,
            journal: None,
            tool_calls: ToolCalls::new(),
            tool_runs: JoinSet::new(),
            forget_me: ForgetMe::default(),
            frames_in,
            frames_out,
            opening: Opening::default(),
            failed_responses: 0,
            response_retry_at: None,
            retry_opening: false,
            ending: None,
            idle: Idle {
                last_speech: Instant::now(),
                prompted: false,
                caller_speaking: false,
            },
            duration_warned: false,
            tool_calls_made: 0,
        };
        task.journal = Some(journal);
        task
    }

    /// Reports to `reporter` when the opening has been heard, or how the call ended.
    pub(super) fn report_to(&mut self, reporter: oneshot::Sender<PlacedOutcome>) {
        self.opening.reporter = Some(reporter);
    }

    /// The opening's audio has played out: the callee heard it.
    fn check_opening_heard(&mut self) {
        if self.opening.generated
            && !self.downlink.has_queued_audio()
            && let Some(reporter) = self.opening.reporter.take()
        {
            info!("opening heard by the callee");
            let _ = reporter.send(PlacedOutcome::OpeningHeard);
        }
    }

    /// Starts connecting to the AI; the connection is driven by the select loop, in parallel
    /// with answering the offer, and retried until shortly before the answer deadline.
    pub(super) fn start_ai(&mut self, caller_context: String) {
        let store = self.context.store.clone();
        let memory = self.context.memory.clone();
        let phone = self.admission.phone().cloned();
        let deadline = (self.flow.started() + self.context.answer_deadline)
            .checked_sub(AI_OPEN_MARGIN)
            .unwrap_or_else(Instant::now);
        let context = async move {
            let mut context = caller_context;
            let now = Utc::now();
            // The caller's date and time, so "tomorrow at three" means the caller's tomorrow.
            let zone = match &phone {
                Some(phone) => tools::zone_of(&*store, phone).await,
                None => local_time::caller_zone(None, None),
            };
            if !context.is_empty() {
                context.push_str("\n\n");
            }
            context.push_str(&zone.now_line(now));
            if let Some(phone) = &phone {
                let remembered = memory::recall(&*store, phone, &memory, now).await;
                if !remembered.is_empty() {
                    context.push_str("\n\n");
                    context.push_str(&remembered);
                }
            }
            context
        };
        self.ai.open_first(context, deadline);
    }

    /// Answers the offer (while the AI connects), then runs the call until it ends.
    pub(super) async fn answer_and_run(&mut self, offer_sdp: &str) -> CallEnd {
        let early = {
            let answering = self.peer.answer(offer_sdp);
            tokio::pin!(answering);
            loop {
                tokio::select! {
                    result = &mut answering => break Early::Answered(result),
                    event = self.ai.next() => match event {
                        // Accepted once signalled and connected (the flow is still negotiating).
                        LinkEvent::Ready => {
                            self.flow.ai_ready();
                        }
                        LinkEvent::Failed(err) => break Early::AiFailed(err),
                        // Nothing else comes before the first session is ready.
                        _ => {}
                    },
                    command = self.commands.recv() => {
                        if let Some(end) = command_end(command) {
                            break Early::Ended(end);
                        }
                    }
                    () = self.admission.cancel_token().cancelled() => {
                        break Early::Ended(CallEnd::Shutdown);
                    }
                }
            }
        };
        let answer = match early {
            Early::Answered(answer) => answer,
            Early::AiFailed(err) => return self.ai_failed(err).await,
            Early::Ended(end) => return self.end(end).await,
        };
        let answer = match answer {
            Ok(answer) => sdp::normalize_answer(&answer),
            Err(err) => {
                warn!(%err, "answering the offer failed");
                return self.end(CallEnd::SetupFailed).await;
            }
        };
        // The stack may answer an offer it could not use with no audio section at all; Meta
        // must never be sent that (the call would die as caller_gone): refuse instead.
        if let Err(err) = sdp::inspect(&answer) {
            warn!(%err, "our answer cannot carry the call: refused");
            return self.end(CallEnd::SetupFailed).await;
        }
        self.answer_sdp = Arc::new(answer);
        let actions = self.flow.sdp_ready();
        if let Some(end) = self.apply(actions).await {
            return end;
        }
        self.run().await
    }

    pub(super) async fn run(&mut self) -> CallEnd {
        // One timer and one cancellation wait for the whole call, re-armed only when the next
        // deadline moves: the loop turns several times per 20 ms frame.
        let timer = tokio::time::sleep_until(self.next_wake().into());
        tokio::pin!(timer);
        let cancelled = self.admission.cancel_token().clone().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            self.admission.set_phase(self.flow.phase());
            let wake = tokio::time::Instant::from(self.next_wake());
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                () = &mut cancelled => {
                    return self.end(CallEnd::Shutdown).await;
                }
                command = self.commands.recv() => {
                    if let Some(end) = self.on_command(command).await {
                        return end;
                    }
                }
                event = self.peer.next_event() => {
                    if let Some(end) = self.on_peer_event(event).await {
                        return end;
                    }
                }
                event = self.ai.next() => {
                    if let Some(end) = self.on_link(event).await {
                        return end;
                    }
                }
                Some((action, result)) = poll_opt(&mut self.graph_op) => {
                    self.graph_op = None;
                    if let Some(end) = self.on_graph_result(action, result).await {
                        return end;
                    }
                }
                Some(joined) = self.tool_runs.join_next(), if !self.tool_runs.is_empty() => {
                    if let Ok(run) = joined
                        && let Some(end) = self.on_tool_finished(run).await
                    {
                        return end;
                    }
                }
                () = &mut timer => {
                    if let Some(end) = self.on_tick().await {
                        return end;
                    }
                }
            }
        }
    }

    /// The earliest of the pacer's next frame and the flow's next timer.
    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let frame = self.downlink.deadline();
        let flow = self.flow.next_deadline();
        let ending = self.ending.as_ref().map(|ending| ending.deadline);
        let rollover = self.ai.rollover_deadline();
        let keys = self.keys.deadline();
        [frame, flow, self.response_retry_at, ending, rollover, keys]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far)
    }

    async fn on_tick(&mut self) -> Option<CallEnd> {
        let now = Instant::now();
        let actions = self.flow.on_timer(now);
        if let Some(end) = self.apply(actions).await {
            return Some(end);
        }
        if self.response_retry_at.is_some_and(|at| at <= now) {
            self.response_retry_at = None;
            debug!("asking the AI again after a failed response");
            let opening = std::mem::take(&mut self.retry_opening)
                .then(|| self.greeting.clone())
                .flatten();
            if let Some(end) = self.ask_ai(opening.as_deref()).await {
                return Some(end);
            }
        }
        let ready = self.ai.is_live() && !self.ai.responding() && self.tool_runs.is_empty();
        if self.keys.take_due(now, ready) {
            debug!("the caller stopped pressing keys; the AI answers them");
            if let Some(end) = self.ask_ai(None).await {
                return Some(end);
            }
        }
        if let Some(end) = self.send_due_frames(now).await {
            return Some(end);
        }
        if let Some(end) = self.check_idle(now).await {
            return Some(end);
        }
        if let Some(end) = self.warn_before_max_duration(now).await {
            return Some(end);
        }
        self.roll_over(now).await;
        self.maybe_end_after_goodbye(now).await
    }

    /// Before the provider ends the session: the next one is opened, then swapped in at a pause.
    async fn roll_over(&mut self, now: Instant) {
        self.ai.maybe_start_rollover(now);
        if !self.ai.next_waiting() {
            return;
        }
        // Nobody speaking, no response being made, no tool running: a swap splits no turn ...
        let quiet =
            !self.idle.caller_speaking && !self.ai.responding() && self.tool_runs.is_empty();
        // ... and nothing playing or ending: the caller cannot notice it.
        let at_pause = quiet && !self.downlink.has_queued_audio() && self.ending.is_none();
        if self.ai.swap_due(now, at_pause, quiet) {
            self.ai.swap(at_pause).await;
            self.tool_calls = ToolCalls::new();
        }
    }

    /// What happened on the AI link.
    async fn on_link(&mut self, event: LinkEvent) -> Option<CallEnd> {
        match event {
            LinkEvent::Event(event) => self.on_ai_event(event).await,
            LinkEvent::Ready => {
                let actions = self.flow.ai_ready();
                if let Some(end) = self.apply(actions).await {
                    return Some(end);
                }
                self.maybe_greet().await
            }
            LinkEvent::Lost => {
                self.forget_session();
                None
            }
            LinkEvent::Replaced => self.recover().await,
            LinkEvent::NextReady => {
                self.roll_over(Instant::now()).await;
                None
            }
            LinkEvent::Quiet => None,
            LinkEvent::Failed(err) => Some(self.ai_failed(err).await),
        }
    }

    /// A send to the AI failed: the session is replaced if it can be.
    async fn ai_lost(&mut self, err: RealtimeError) -> Option<CallEnd> {
        match self.ai.lost(err) {
            LinkEvent::Failed(err) => Some(self.ai_failed(err).await),
            _ => {
                self.forget_session();
                None
            }
        }
    }

    /// What belonged to the lost session: its responses and tool calls. Audio already
    /// received plays on; a goodbye that was cut off counts as said.
    fn forget_session(&mut self) {
        self.tool_calls = ToolCalls::new();
        self.speech_stopped_at = None;
        self.idle.caller_speaking = false;
        if self.opening.requested && !self.opening.generated {
            self.opening.response_id = None;
            self.retry_opening = true;
        }
        if let Some(ending) = self.ending.as_mut() {
            ending.goodbye_done = true;
        }
    }

    /// A new session replaced the lost one: it gets the conversation and the gap's audio, and
    /// is asked again for what the lost one left unsaid.
    async fn recover(&mut self) -> Option<CallEnd> {
        let recovered = match self.ai.finish_recovery().await {
            Ok(recovered) => recovered,
            Err(err) => return self.ai_lost(err).await,
        };
        if std::mem::take(&mut self.retry_opening) {
            debug!("asking the new AI session for the opening again");
            self.opening.requested = true;
            let opening = self.greeting.clone();
            return self.ask_ai(opening.as_deref()).await;
        }
        if !self.greeted {
            return self.maybe_greet().await;
        }
        if recovered.caller_unanswered {
            debug!("asking the new AI session to answer the caller's last turn");
            return self.ask_ai(None).await;
        }
        None
    }

    /// Shortly before `MAX_CALL_DURATION` the AI tells the caller the call is about to end.
    async fn warn_before_max_duration(&mut self, now: Instant) -> Option<CallEnd> {
        let since = self.flow.active_since()?;
        if self.duration_warned || !self.ai.is_live() {
            return None;
        }
        // The call's own maximum: `MAX_CALL_DURATION`, or less when the caller's minutes of the
        // day run out sooner.
        let max = self.flow.max_duration();
        let warn_at = since + max - DURATION_WARNING_BEFORE.min(max / 3);
        if now < warn_at {
            return None;
        }
        self.duration_warned = true;
        info!("the call nears its maximum duration; the caller is told");
        self.ask_ai(Some(DURATION_WARNING)).await
    }

    /// `IDLE_TIMEOUT` without speech either way: the AI asks whether the caller is still there;
    /// as long again, it says goodbye and the call ends.
    async fn check_idle(&mut self, now: Instant) -> Option<CallEnd> {
        let timeout = self.context.idle_timeout?;
        if !self.downlink.is_started() || !self.ai.is_live() || self.ending.is_some() {
            self.idle.last_speech = now;
            return None;
        }
        if self.idle.caller_speaking
            || self.downlink.has_queued_audio()
            || !self.tool_runs.is_empty()
        {
            self.idle.last_speech = now;
        }
        if now.duration_since(self.idle.last_speech) < timeout {
            return None;
        }
        self.idle.last_speech = now;
        if !self.idle.prompted {
            self.idle.prompted = true;
            debug!("idle: asking whether the caller is still there");
            return self.ask_ai(Some(IDLE_PROMPT)).await;
        }
        info!("idle: nobody is speaking; ending the call after a goodbye");
        self.ending = Some(Ending {
            deadline: now + GOODBYE_TIMEOUT,
            calling_response: None,
            goodbye_done: false,
            reason: CallEnd::IdleTimeout,
        });
        self.ask_ai(Some(IDLE_GOODBYE)).await
    }

    /// Ends the call the AI asked to end, once its goodbye has played out (or at the deadline).
    async fn maybe_end_after_goodbye(&mut self, now: Instant) -> Option<CallEnd> {
        let ending = self.ending.as_ref()?;
        let played = ending.goodbye_done && !self.downlink.has_queued_audio();
        if !played && now < ending.deadline {
            return None;
        }
        let reason = ending.reason;
        info!(
            played,
            reason = reason.as_str(),
            "ending the call after the goodbye"
        );
        Some(self.end(reason).await)
    }

    /// Sends the frames the downlink says are due: AI audio when queued, encoded silence
    /// otherwise, so the caller's leg is never silent at the RTP level (§7.4).
    async fn send_due_frames(&mut self, now: Instant) -> Option<CallEnd> {
        let polled = self.downlink.poll(now, &mut self.outgoing);
        if polled.frames > 0 {
            self.context
                .metrics
                .frame_send_delay_seconds
                .observe(polled.delay.as_secs_f64());
            self.context.headroom.record_send_delay(polled.delay);
        }
        if polled.late {
            self.context.metrics.late_pacer_ticks.inc();
        }
        for frame in self.outgoing.drain(..) {
            if let Err(err) = self
                .peer
                .write_opus(frame.sequence_number, frame.timestamp, frame.payload)
                .await
            {
                debug!(%err, "writing RTP failed");
            }
            self.frames_out.inc();
        }
        if self.opening.generated {
            self.check_opening_heard();
        }
        None
    }

    /// Commands from webhooks and operators.
    async fn on_command(&mut self, command: Option<CallCommand>) -> Option<CallEnd> {
        match command {
            Some(CallCommand::RemoteAnswer(answer)) => {
                if self.flow.direction() != CallDirection::Outbound || self.answer_applied {
                    return None;
                }
                self.answer_applied = true;
                let answer = sdp::opus_fmtp_for_stack(&answer);
                if let Err(err) = self.peer.apply_answer(&answer).await {
                    warn!(%err, "Meta's answer could not be applied");
                    return Some(self.end(CallEnd::SetupFailed).await);
                }
                debug!("answer applied");
                None
            }
            Some(CallCommand::RemoteAccepted) => {
                if self.flow.direction() != CallDirection::Outbound {
                    return None;
                }
                info!("callee picked up");
                let actions = self.flow.remote_accepted(Instant::now());
                self.apply(actions).await
            }
            Some(CallCommand::RemoteRejected) => {
                if self.flow.direction() != CallDirection::Outbound {
                    return None;
                }
                info!("callee declined");
                Some(self.end(CallEnd::Declined).await)
            }
            other => match command_end(other) {
                Some(end) => Some(self.end(end).await),
                None => None,
            },
        }
    }

    async fn on_peer_event(&mut self, event: Option<PeerEvent>) -> Option<CallEnd> {
        match event {
            Some(PeerEvent::Rtp(packet)) => self.on_caller_packet(packet).await,
            Some(PeerEvent::LossReport(report)) => {
                self.fec
                    .on_report(Instant::now(), &report, &mut self.downlink);
                None
            }
            Some(PeerEvent::Connected) => {
                let actions = self.flow.media_connected(Instant::now());
                self.apply(actions).await
            }
            Some(PeerEvent::Gone) | None => Some(self.end(CallEnd::CallerGone).await),
        }
    }

    /// One RTP packet from the caller: Opus is decoded (losses concealed) and sent to the AI;
    /// a keypress is passed on as one.
    async fn on_caller_packet(&mut self, packet: RtpPacket) -> Option<CallEnd> {
        if packet.payload_type == TELEPHONE_EVENT_PAYLOAD_TYPE {
            return self.on_keypad_packet(&packet).await;
        }
        if packet.payload_type != OPUS_PAYLOAD_TYPE {
            // Anything unexpected: not audio for the AI.
            return None;
        }
        self.uplink_pcm.clear();
        self.uplink.push(
            packet.sequence_number,
            &packet.payload,
            &mut self.uplink_pcm,
        );
        let frames = (self.uplink_pcm.len() / SAMPLES_PER_FRAME) as u64;
        self.frames_in.inc_by(frames);
        let metrics = &self.context.metrics;
        let stats = self.uplink.stats();
        if stats.concealed > self.concealed_seen {
            metrics
                .concealed_frames
                .inc_by(stats.concealed - self.concealed_seen);
            self.concealed_seen = stats.concealed;
        }
        if stats.fec_recovered > self.fec_recovered_seen {
            metrics
                .fec_recovered_frames
                .inc_by(stats.fec_recovered - self.fec_recovered_seen);
            self.fec_recovered_seen = stats.fec_recovered;
        }
        // The AI hears the caller only once the call is answered.
        if self.downlink.is_started()
            && !self.uplink_pcm.is_empty()
            && let Err(err) = self.ai.send_audio(&self.uplink_pcm).await
        {
            return self.ai_lost(err).await;
        }
        None
    }

    /// One RFC 4733 telephone-event packet. A new keypress reaches the AI at once as a
    /// conversation item, and stops the AI talking as speech would; the AI is asked to answer
    /// once the caller stops pressing ([`KeyEntry`]).
    async fn on_keypad_packet(&mut self, packet: &RtpPacket) -> Option<CallEnd> {
        // The event took sequence numbers of the audio stream: they are not lost audio.
        self.uplink.skip(packet.sequence_number);
        let key = self.keypad.push(packet.timestamp, &packet.payload)?;
        // Like audio, keys reach the AI only once the call is answered.
        if !self.downlink.is_started() {
            debug!("a key pressed before the call was answered is not passed on");
            return None;
        }
        self.context
            .metrics
            .keypresses
            .with_label_values(&[key.as_str()])
            .inc();
        // Which key is not logged: it may be a digit of a PIN.
        debug!("the caller pressed a key");
        let now = Instant::now();
        self.idle.last_speech = now;
        self.idle.prompted = false;
        if let Some(end) = self.cut_playback().await {
            return Some(end);
        }
        if self.ai.responding()
            && let Err(err) = self.ai.send_text(events::response_cancel()).await
        {
            return self.ai_lost(err).await;
        }
        let text = pressed_text(key);
        if let Some(journal) = &self.journal {
            journal.push(Role::User, &text);
        }
        self.ai.caller_pressed(&text);
        let item = events::conversation_message(Speaker::User, &text);
        if let Err(err) = self.ai.send_text(item).await {
            return self.ai_lost(err).await;
        }
        self.keys.pressed(key, now);
        None
    }

    /// The caller interrupts the AI: its queued audio is dropped, and the AI is told how much
    /// of each item was heard.
    async fn cut_playback(&mut self) -> Option<CallEnd> {
        let truncations = self.downlink.barge_in();
        if !truncations.is_empty() {
            self.context.metrics.barge_ins.inc();
            debug!(count = truncations.len(), "barge-in: playback dropped");
        }
        for truncation in truncations {
            let event = events::truncate(
                &truncation.item_id,
                truncation.content_index,
                truncation.audio_end_ms,
            );
            if let Err(err) = self.ai.send_text(event).await {
                return self.ai_lost(err).await;
            }
        }
        None
    }

    async fn on_ai_event(&mut self, event: ServerEvent) -> Option<CallEnd> {
        match event {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                content_index,
                pcm,
            } => {
                let queued = self
                    .downlink
                    .push_audio(&response_id, &item_id, content_index, &pcm);
                if queued && let Some(stopped) = self.speech_stopped_at.take() {
                    self.context
                        .metrics
                        .ai_response_latency_seconds
                        .observe(stopped.elapsed().as_secs_f64());
                }
            }
            ServerEvent::SpeechStopped { .. } => {
                self.speech_stopped_at = Some(Instant::now());
                self.idle.last_speech = Instant::now();
                self.idle.caller_speaking = false;
            }
            ServerEvent::SpeechStarted { .. } => {
                self.idle = Idle {
                    last_speech: Instant::now(),
                    prompted: false,
                    caller_speaking: true,
                };
                // The caller speaks again: the AI answers that, not a retry or the keys.
                self.response_retry_at = None;
                self.keys.cancel();
                return self.cut_playback().await;
            }
            ServerEvent::Error { code, message, .. } => {
                warn!(
                    code = %LogSafe::new(code.as_deref().unwrap_or("unknown")),
                    message = %LogSafe::truncated(&message, AI_TEXT_CHARS),
                    "AI error event"
                );
                self.context
                    .metrics
                    .ai_errors
                    .with_label_values(&[ai_error_code_label(code.as_deref())])
                    .inc();
            }
            ServerEvent::ResponseCreated { response_id } => {
                if self.opening.requested && self.opening.response_id.is_none() {
                    self.opening.response_id = Some(response_id.clone());
                }
                self.tool_calls.response_created(&response_id);
            }
            ServerEvent::ResponseDone {
                response_id,
                status,
                reason,
            } => {
                debug!(%response_id, %status, "AI response done");
                if let Some(ending) = self.ending.as_mut()
                    && ending.calling_response.as_deref() != Some(response_id.as_str())
                {
                    ending.goodbye_done = true;
                }
                if let Some(end) = self
                    .after_response(&response_id, &status, reason.as_deref())
                    .await
                {
                    return Some(end);
                }
                // The opening counts once said, in full or until the callee spoke over it.
                if self.opening.response_id.as_deref() == Some(response_id.as_str())
                    && matches!(status.as_str(), "completed" | "cancelled" | "incomplete")
                {
                    self.opening.generated = true;
                }
                let send = self.tool_calls.response_done(&response_id, &status);
                return self.send_tool_results(send).await;
            }
            ServerEvent::FunctionCallArgumentsDone {
                response_id,
                call_id,
                name,
                arguments,
                ..
            } => self.start_tool(response_id, call_id, name, arguments),
            ServerEvent::RateLimits(limits) => {
                for limit in limits {
                    let name = match limit.name.as_str() {
                        "requests" => "requests",
                        "tokens" => "tokens",
                        _ => "other",
                    };
                    let gauge = &self.context.metrics.ai_rate_limit;
                    gauge.with_label_values(&[name, "limit"]).set(limit.limit);
                    gauge
                        .with_label_values(&[name, "remaining"])
                        .set(limit.remaining);
                }
            }
            ServerEvent::InputTranscriptCompleted { transcript, .. } => {
                if let Some(journal) = &self.journal {
                    journal.push(Role::User, &transcript);
                }
            }
            ServerEvent::OutputTranscriptDone { transcript, .. } => {
                if let Some(journal) = &self.journal {
                    journal.push(Role::Assistant, &transcript);
                }
            }
            other => tracing::trace!(?other, "AI event"),
        }
        None
    }

    async fn on_graph_result(
        &mut self,
        action: GraphAction,
        result: Result<(), GraphError>,
    ) -> Option<CallEnd> {
        let received_at = self.flow.started();
        if let Err(err) = result {
            warn!(action = action.as_str(), %err, "Graph API action failed");
            return Some(self.end(CallEnd::GraphFailed).await);
        }
        let now = Instant::now();
        let actions = match action {
            GraphAction::PreAccept => self.flow.signalled(now),
            GraphAction::Accept => {
                self.context
                    .metrics
                    .call_setup_seconds
                    .observe(now.duration_since(received_at).as_secs_f64());
                info!(
                    setup_ms = now.duration_since(received_at).as_millis() as u64,
                    "call accepted"
                );
                self.flow.accepted(now)
            }
            _ => vec![],
        };
        self.apply(actions).await
    }

    /// Answers a tool call with a result known at once, through the same queue as a run tool
    /// (so that its output reaches the AI in order, and only the session that asked).
    fn answer_tool(
        &mut self,
        response_id: String,
        call_id: String,
        name: String,
        result: ToolResult,
    ) {
        let generation = self.ai.generation();
        self.tool_runs.spawn(async move {
            ToolRun {
                response_id,
                call_id,
                name,
                result,
                generation,
            }
        });
    }

    /// Runs a tool on its own task (the AI and the media go on meanwhile), for this call's caller.
    fn start_tool(
        &mut self,
        response_id: String,
        call_id: String,
        name: String,
        arguments: String,
    ) {
        debug!(tool = %name, "AI calls a tool");
        self.tool_calls.call_started(&response_id);
        if name == tools::END_CALL {
            // Acted on here: the goodbye that follows is the call's last response.
            if self.ending.is_none() {
                self.ending = Some(Ending {
                    deadline: Instant::now() + GOODBYE_TIMEOUT,
                    calling_response: Some(response_id.clone()),
                    goodbye_done: false,
                    reason: CallEnd::AiEnded,
                });
            }
            self.answer_tool(
                response_id,
                call_id,
                name,
                ToolResult::ok_text(tools::END_CALL_OUTPUT),
            );
            return;
        }
        // `end_call` is never refused (the call must be able to end); every other tool call past
        // `TOOL_CALLS_PER_CALL` is answered with an error, without touching the store.
        self.tool_calls_made = self.tool_calls_made.saturating_add(1);
        let limit = self.context.tool_calls_per_call;
        if limit > 0 && self.tool_calls_made > limit {
            if self.tool_calls_made == limit + 1 {
                info!(
                    limit,
                    "the call reached its tool call limit; further tool calls are refused"
                );
            }
            self.answer_tool(
                response_id,
                call_id,
                name,
                tools::tool_calls_limit_reached(limit),
            );
            return;
        }
        if name == tools::FORGET_ME {
            self.forget_me_step(response_id, call_id, name, &arguments);
            return;
        }
        let store = self.context.store.clone();
        let phone = self.admission.phone().cloned();
        let timeout = self.context.tool_timeout;
        let limits = self.context.tool_limits;
        let generation = self.ai.generation();
        self.tool_runs.spawn(async move {
            let dispatch = tools::dispatch(
                &*store,
                &limits,
                phone.as_ref(),
                &name,
                &arguments,
                Utc::now(),
            );
            let result = match tokio::time::timeout(
                timeout,
                AssertUnwindSafe(dispatch).catch_unwind(),
            )
            .await
            {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => ToolResult::error(ToolOutcome::StoreError, "The tool failed."),
                Err(_) => ToolResult::error(
                    ToolOutcome::Timeout,
                    "The task list did not answer in time. Apologise and offer to try again.",
                ),
            };
            ToolRun {
                response_id,
                call_id,
                name,
                result,
                generation,
            }
        });
    }

    /// `forget_me`: a request is answered at once; a confirmation after it stops the journal
    /// (nothing more of this call is kept, and its log row goes at the end) and deletes the
    /// caller's data on a tool task, bounded like any tool.
    fn forget_me_step(
        &mut self,
        response_id: String,
        call_id: String,
        name: String,
        arguments: &str,
    ) {
        let phone = self.admission.phone().cloned();
        let generation = self.ai.generation();
        let step = self.forget_me.step(arguments, phone.is_some());
        let (ForgetStep::Delete, Some(phone)) = (&step, phone) else {
            let ForgetStep::Answer(result) = step else {
                unreachable!("a confirmation needs a caller");
            };
            self.answer_tool(response_id, call_id, name, result);
            return;
        };
        if let Some(journal) = &self.journal {
            journal.forget();
        }
        info!("the caller confirmed: forgetting everything kept about them");
        let store = self.context.store.clone();
        let timeout = self.context.tool_timeout;
        let forgotten = self
            .context
            .metrics
            .callers_forgotten
            .with_label_values(&["tool"]);
        self.tool_runs.spawn(async move {
            let result = match tokio::time::timeout(timeout, tools::forget_caller(&*store, &phone))
                .await
            {
                Ok(result) => result,
                Err(_) => ToolResult::error(
                    ToolOutcome::Timeout,
                    "The deletion did not finish in time. Apologise; nothing more of this call is kept, and the caller can ask again later.",
                ),
            };
            if result.outcome == ToolOutcome::Ok {
                forgotten.inc();
            }
            ToolRun {
                response_id,
                call_id,
                name,
                result,
                generation,
            }
        });
    }

    async fn on_tool_finished(&mut self, run: ToolRun) -> Option<CallEnd> {
        let tool = tools::metric_label(&run.name);
        self.context
            .metrics
            .tool_calls
            .with_label_values(&[tool, run.result.outcome.as_str()])
            .inc();
        debug!(tool, outcome = run.result.outcome.as_str(), "tool finished");
        if run.generation != self.ai.generation() {
            return self.answer_tool_of_lost_session(run).await;
        }
        let send = self
            .tool_calls
            .tool_finished(&run.response_id, &run.call_id, run.result.output);
        self.send_tool_results(send).await
    }

    /// A tool called by a session that was lost since: the new session does not know the call,
    /// so the result goes in as a note of the conversation, and the AI is asked to tell it.
    async fn answer_tool_of_lost_session(&mut self, run: ToolRun) -> Option<CallEnd> {
        let note = format!(
            "Before the connection dropped you called the tool {}; its result: {}",
            run.name, run.result.output
        );
        self.ai.note(&note);
        match self
            .ai
            .send_text(events::conversation_message(Speaker::System, &note))
            .await
        {
            Ok(true) => self.ask_ai(None).await,
            Ok(false) => None,
            Err(err) => self.ai_lost(err).await,
        }
    }

    async fn send_tool_results(&mut self, send: ToolSend) -> Option<CallEnd> {
        if send.is_empty() {
            return None;
        }
        let mut events: Vec<String> = send
            .outputs
            .iter()
            .map(|(call_id, output)| events::function_call_output(call_id, output))
            .collect();
        if send.create_response {
            events.push(events::response_create(None));
        }
        for event in events {
            if let Err(err) = self.ai.send_text(event).await {
                return self.ai_lost(err).await;
            }
        }
        None
    }

    /// Carries out the flow's actions. Returns the end once the flow says the call is over.
    async fn apply(&mut self, actions: Vec<Action>) -> Option<CallEnd> {
        for action in actions {
            match action {
                Action::PreAccept | Action::Accept => {
                    let graph = self.context.graph.clone();
                    let call_id = self.admission.call_id().clone();
                    let answer = self.answer_sdp.clone();
                    let pre = action == Action::PreAccept;
                    self.graph_op = Some(Box::pin(async move {
                        if pre {
                            (
                                GraphAction::PreAccept,
                                graph.pre_accept(&call_id, &answer).await,
                            )
                        } else {
                            (
                                GraphAction::Accept,
                                graph.accept(&call_id, &answer, None).await,
                            )
                        }
                    }));
                }
                Action::StartMedia => {
                    // RTP starts at once (§7.1 step 7): the first frame goes at the call's own
                    // millisecond of the 20 ms period (within 20 ms), the rest every 20 ms.
                    // The AI's audio waits for the lead, the bridge's silence going out
                    // meanwhile, so the phone's jitter buffer has settled by the first word.
                    let slot = self.context.frame_phases.take();
                    let now = Instant::now();
                    self.downlink.start(now, slot);
                    self.downlink
                        .hold_audio_until(now + self.context.greeting_lead);
                    if let Some(end) = self.maybe_greet().await {
                        return Some(end);
                    }
                }
                Action::Connect => {
                    // Sent by `place_outbound` before the task took the call over.
                }
                Action::Reject | Action::Terminate => {
                    signal_end(&self.context.graph, self.admission.call_id(), &[action]).await;
                }
                Action::Finish(end) => return Some(end),
            }
        }
        None
    }

    /// A failed response (realtime §10.3) is asked for once more after a moment; a second
    /// failure in a row gets a spoken apology; after that the bridge waits for the caller.
    async fn after_response(
        &mut self,
        response_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Option<CallEnd> {
        if status != "failed" {
            if status == "completed" {
                self.failed_responses = 0;
            }
            return None;
        }
        self.failed_responses += 1;
        let reason = reason.unwrap_or("unknown");
        let action = match self.failed_responses {
            1 => "retried",
            2 => "apologised",
            _ => "gave_up",
        };
        warn!(reason, action, "the AI failed a response");
        // A failed opening is asked for again as the opening (the next response created).
        if self.opening.response_id.as_deref() == Some(response_id) {
            self.opening.response_id = None;
            self.retry_opening = true;
        }
        self.context
            .metrics
            .ai_failed_responses
            .with_label_values(&[action])
            .inc();
        match self.failed_responses {
            1 => {
                self.response_retry_at = Some(Instant::now() + RESPONSE_RETRY_DELAY);
                None
            }
            2 => {
                // The apology is not the opening: an opening that failed twice is not heard.
                if std::mem::take(&mut self.retry_opening) {
                    self.opening.requested = false;
                }
                self.ask_ai(Some(APOLOGY)).await
            }
            _ => None,
        }
    }

    /// Asks the AI for a response now (with `instructions` for this one only).
    async fn ask_ai(&mut self, instructions: Option<&str>) -> Option<CallEnd> {
        if let Err(err) = self
            .ai
            .send_text(events::response_create(instructions))
            .await
        {
            return self.ai_lost(err).await;
        }
        None
    }

    /// Once answered and the AI is ready, let it speak first (if a greeting is configured).
    async fn maybe_greet(&mut self) -> Option<CallEnd> {
        if self.greeted || !self.downlink.is_started() || !self.ai.is_live() {
            return None;
        }
        self.greeted = true;
        let greeting = self.greeting.clone()?;
        self.opening.requested = true;
        self.ask_ai(Some(&greeting)).await
    }

    async fn ai_failed(&mut self, err: RealtimeError) -> CallEnd {
        warn!(%err, "AI session failed");
        self.context
            .metrics
            .ai_errors
            .with_label_values(&["session_failed"])
            .inc();
        self.end(CallEnd::AiFailed).await
    }

    /// Ends the call through the flow, which decides whether Meta must be told.
    async fn end(&mut self, reason: CallEnd) -> CallEnd {
        // Ending only ever yields reject/terminate and finish.
        let actions = self.flow.end(reason);
        signal_end(&self.context.graph, self.admission.call_id(), &actions).await;
        self.flow.end_reason().unwrap_or(reason)
    }

    /// Releases everything the call owns; the admission goes last.
    pub(super) async fn finish(mut self, end: CallEnd) {
        self.graph_op = None;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ai.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.peer.close()).await;
        debug_assert_eq!(self.flow.end_reason(), Some(end));
        self.tool_runs.abort_all();
        if let Some(journal) = self.journal.take() {
            let answered_at = self.flow.active_since();
            journal
                .finish(CallOutcome {
                    answered_at: answered_at.map(wall_clock),
                    ended_at: Utc::now(),
                    duration_seconds: answered_at
                        .map_or(0, |since| since.elapsed().as_secs() as u32),
                    end_reason: end.as_str().to_owned(),
                })
                .await;
        }
        if self.forget_me.confirmed()
            && let Some(phone) = self.admission.phone().cloned()
        {
            let store = self.context.store.clone();
            forget_again(&*store, &phone, self.context.tool_timeout).await;
        }
        record_end(&self.context.metrics, &self.flow);
        if let (CallDirection::Inbound, Some(phone), Some(since)) = (
            self.flow.direction(),
            self.admission.phone(),
            self.flow.active_since(),
        ) {
            self.context
                .caller_limits
                .record(phone, since.elapsed(), std::time::SystemTime::now())
                .await;
        }
        if let Some(reporter) = self.opening.reporter.take() {
            let answered = self.flow.active_since().is_some();
            let _ = reporter.send(PlacedOutcome::Ended { end, answered });
        }
        drop(self.admission);
    }
}

/// At the end of a call whose caller confirmed "forget me": the deletion once more, after the
/// journal's last write, since the end aborts running tools and may have cut it short (anything
/// stored for the caller since goes too, as they asked). Bounded like a tool.
async fn forget_again(store: &dyn Store, phone: &PhoneNumber, timeout: Duration) {
    match tokio::time::timeout(timeout, store.forget_caller(phone)).await {
        Ok(Ok(deleted)) => debug!(rows = deleted.total(), "forgotten caller: final sweep"),
        Ok(Err(err)) => warn!(%err, "forgotten caller: the final sweep failed"),
        Err(_) => warn!("forgotten caller: the final sweep timed out"),
    }
}

/// A tool's result on its way back to the call task.
struct ToolRun {
    response_id: String,
    call_id: String,
    name: String,
    result: ToolResult,
    /// The AI session (its link generation) that called the tool.
    generation: u32,
}

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(instant: Instant) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(instant.elapsed()).unwrap_or_default()
}

/// What a command from outside means for the call.
fn command_end(command: Option<CallCommand>) -> Option<CallEnd> {
    match command {
        Some(CallCommand::RemoteTerminated) => Some(CallEnd::RemoteTerminated),
        Some(CallCommand::Hangup(end)) => Some(end),
        // Only outbound calls get these; an inbound call ignores them.
        Some(CallCommand::RemoteAnswer(_))
        | Some(CallCommand::RemoteAccepted)
        | Some(CallCommand::RemoteRejected) => None,
        // Every sender is gone: the registry entry was removed, which only happens at the end.
        None => Some(CallEnd::Shutdown),
    }
}

/// Sends `reject` or `terminate` for the call, bounded in time. Failures are logged only: the
/// call is over for us either way, and Meta ends it on its side when media stops.
async fn signal_end(graph: &GraphClient, call_id: &CallId, actions: &[Action]) {
    for action in actions {
        let (name, result) = match action {
            Action::Reject => (
                "reject",
                tokio::time::timeout(END_SIGNAL_TIMEOUT, graph.reject(call_id)).await,
            ),
            Action::Terminate => (
                "terminate",
                tokio::time::timeout(END_SIGNAL_TIMEOUT, graph.terminate(call_id)).await,
            ),
            _ => continue,
        };
        match result {
            Ok(Ok(())) => debug!(action = name, "Meta told the call ended"),
            Ok(Err(err)) => warn!(action = name, %err, "telling Meta the call ended failed"),
            Err(_) => warn!(action = name, "telling Meta the call ended timed out"),
        }
    }
}

/// The one line and the metrics of an ended call.
fn record_end(metrics: &Metrics, flow: &CallFlow) {
    let (direction, started) = (flow.direction(), flow.started());
    let end = flow.end_reason().unwrap_or(CallEnd::SetupFailed);
    let duration = flow
        .active_since()
        .map(|since| since.elapsed())
        .unwrap_or_default();
    metrics
        .calls
        .with_label_values(&[direction.as_str(), end.as_str()])
        .inc();
    if flow.active_since().is_some() {
        metrics
            .call_duration_seconds
            .observe(duration.as_secs_f64());
    }
    info!(
        reason = end.as_str(),
        duration_ms = duration.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "call ended"
    );
}

/// Polls an optional future; pending forever when there is none (a disabled select branch).
async fn poll_opt<T>(future: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> Option<T> {
    match future.as_mut() {
        Some(future) => Some(future.await),
        None => std::future::pending().await,
    }
}
