//! A lean simulated caller for load: a real WebRTC peer offering like Meta, sending the shared
//! pre-encoded [`Clip`] in a loop (no encoding), and keeping counters rather than recordings.
//! It decodes what it hears only to find marker onsets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::graph_watch::GraphWatch;
use super::markers::{CALLER_NAME_PREFIX, Clip, OnsetDetector};
use crate::loss::{self, CallLoss, WireLossCounts};
use crate::phone::{WebhookReply, post_webhook, rename_mid, unix_now};
use crate::webhooks::{self, BusinessLine};
use bridge::ids::{CallId, PhoneNumber};
use bridge::media::codec::{FRAME_MS, MAX_PACKET_SAMPLES, OpusDecoder, RTP_TIMESTAMP_STEP};
use bridge::media::peer::{MediaPeer, PeerEvent, PeerSettings};

/// How long a phone waits for the bridge's `pre_accept` and `accept`.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// A packet arriving more than this after the previous one is late.
const LATE_GAP: Duration = Duration::from_millis(30);
/// A packet arriving less than this after the previous one is bunched.
const BUNCHED_GAP: Duration = Duration::from_millis(10);

/// Where phones call and how they sign.
#[derive(Clone)]
pub struct Caller {
    /// The replicas' base URLs (one for a single bridge). A call's `connect` goes to one chosen
    /// by its key, its `terminate` to the next one, so that in a fleet every terminate reaches
    /// a replica that does not own the call and is forwarded.
    pub bridge_urls: Vec<String>,
    pub app_secret: String,
    pub line: BusinessLine,
    pub graph: GraphWatch,
    pub http: reqwest::Client,
    pub clip: Arc<Clip>,
    /// Packets each phone's wire loses, each direction (`--uplink-loss`, `--downlink-loss`).
    pub loss: CallLoss,
}

impl Caller {
    /// Signs `body` and posts it to the first replica's webhook, as Meta does.
    pub async fn post(&self, body: String) -> anyhow::Result<WebhookReply> {
        self.post_to(0, body).await
    }

    /// Signs `body` and posts it to the webhook of replica `n` (modulo their number).
    pub async fn post_to(&self, n: u64, body: String) -> anyhow::Result<WebhookReply> {
        let url = &self.bridge_urls[(n % self.bridge_urls.len() as u64) as usize];
        post_webhook(&self.http, url, &self.app_secret, body).await
    }
}

/// What one phone counted.
#[derive(Debug, Default, Clone)]
pub struct PhoneStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Sequence numbers never seen (downlink loss).
    pub packets_lost: u64,
    pub late: u64,
    pub bunched: u64,
    pub max_gap_ms: f64,
    /// RFC 3550 interarrival jitter at the end, in ms.
    pub jitter_ms: f64,
    /// When packets starting a marker went out.
    pub markers_sent: Vec<Instant>,
    /// When packets holding an onset arrived.
    pub onsets_heard: Vec<Instant>,
    last_arrival: Option<(Instant, u32)>,
    next_sequence: Option<u16>,
}

impl PhoneStats {
    fn on_packet(&mut self, now: Instant, sequence: u16, timestamp: u32) {
        self.packets_received += 1;
        if let Some(expected) = self.next_sequence {
            let gap = sequence.wrapping_sub(expected);
            // A small forward jump is loss; anything else is reordering or a duplicate.
            if gap < 1000 {
                self.packets_lost += u64::from(gap);
            }
        }
        self.next_sequence = Some(sequence.wrapping_add(1));
        if let Some((previous, previous_timestamp)) = self.last_arrival {
            let gap = now - previous;
            if gap > LATE_GAP {
                self.late += 1;
            } else if gap < BUNCHED_GAP {
                self.bunched += 1;
            }
            self.max_gap_ms = self.max_gap_ms.max(gap.as_secs_f64() * 1000.0);
            let media_ms = f64::from(timestamp.wrapping_sub(previous_timestamp)) / 48.0;
            let difference = (gap.as_secs_f64() * 1000.0 - media_ms).abs();
            self.jitter_ms += (difference - self.jitter_ms) / 16.0;
        }
        self.last_arrival = Some((now, timestamp));
    }
}

/// A phone ready to dial: its peer, its offer, its `connect`.
pub struct Prepared {
    pub key: u64,
    call_id: CallId,
    user: PhoneNumber,
    peer: MediaPeer,
    body: String,
}

impl Prepared {
    /// Builds the peer, the offer and the `connect` (all before the clock starts).
    pub async fn new(caller: &Caller, peer: &PeerSettings, key: u64) -> anyhow::Result<Self> {
        let call_id = CallId::new(format!("wacid.LOAD{key}-{:08x}", rand::random::<u32>()));
        let user = PhoneNumber::new(format!("4477{:08}", key));
        // The phone's own counters show what its wire loses (downlink gaps; the bridge's
        // concealed frames for the uplink), so the drops are not counted twice.
        let wire_losses = Arc::new(WireLossCounts::default());
        let mut peer = loss::phone_peer(peer, caller.loss, &wire_losses).await?;
        let offer = rename_mid(&peer.offer().await?, "0", "audio");
        caller.graph.double().register_offer(&call_id, &offer);
        let body = webhooks::connect_offer(
            &caller.line,
            &call_id,
            &user,
            &format!("{CALLER_NAME_PREFIX}{key}"),
            &offer,
            unix_now(),
        );
        Ok(Self {
            key,
            call_id,
            user,
            peer,
            body,
        })
    }
}

/// How a dial ended.
pub enum Dialled {
    /// Answered: media flows until [`LiveCall::hang_up`].
    Live(LiveCall),
    /// The bridge refused the call, for this reason (`at_capacity` when it is full).
    Refused(String),
    Failed(String),
}

/// A call in progress.
pub struct LiveCall {
    pub key: u64,
    pub call_id: CallId,
    /// Webhook sent → `accept` received by the Graph double.
    pub setup: Duration,
    /// Webhook sent → its HTTP answer, and → `pre_accept` at the Graph double.
    pub webhook_answered: Duration,
    pub pre_accepted: Duration,
    stats: Arc<Mutex<PhoneStats>>,
    stop: Option<oneshot::Sender<()>>,
    media: Option<JoinHandle<()>>,
    user: PhoneNumber,
}

/// Sends the `connect`, then plays Meta's part: applies the `pre_accept` answer and waits for
/// `accept`.
pub async fn dial(caller: &Caller, prepared: Prepared) -> Dialled {
    let Prepared {
        key,
        call_id,
        user,
        peer,
        body,
    } = prepared;
    let pre_accept = caller.graph.expect(&call_id, "pre_accept");
    let accept = caller.graph.expect(&call_id, "accept");
    let sent_at = Instant::now();
    let reply = match caller.post_to(key, body).await {
        Ok(reply) => reply,
        Err(err) => {
            caller.graph.forget(&call_id);
            peer.close().await;
            return Dialled::Failed(format!("webhook: {err}"));
        }
    };
    if reply.status != 200 || reply.refusal().is_some() {
        caller.graph.forget(&call_id);
        peer.close().await;
        return match reply.refusal() {
            Some(reason) => Dialled::Refused(reason),
            None => Dialled::Failed(format!("connect answered {}", reply.status)),
        };
    }
    let webhook_answered = sent_at.elapsed();
    let (answer, pre_accepted) = match tokio::time::timeout(ANSWER_WAIT, pre_accept).await {
        Ok(Ok(action)) => (
            action.sdp,
            action.received_at.saturating_duration_since(sent_at),
        ),
        _ => (None, Duration::ZERO),
    };
    let Some(answer) = answer else {
        caller.graph.forget(&call_id);
        peer.close().await;
        return Dialled::Failed("no pre_accept".into());
    };
    if let Err(err) = peer.apply_answer(&rename_mid(&answer, "audio", "0")).await {
        caller.graph.forget(&call_id);
        peer.close().await;
        return Dialled::Failed(format!("answer: {err}"));
    }
    let stats = Arc::new(Mutex::new(PhoneStats::default()));
    let (stop, stopped) = oneshot::channel();
    let media = tokio::spawn(run_media(peer, caller.clip.clone(), stats.clone(), stopped));
    let mut call = LiveCall {
        key,
        call_id: call_id.clone(),
        setup: Duration::ZERO,
        webhook_answered,
        pre_accepted,
        stats,
        stop: Some(stop),
        media: Some(media),
        user,
    };
    match tokio::time::timeout(ANSWER_WAIT, accept).await {
        Ok(Ok(action)) if action.status == 200 => {
            call.setup = action.received_at.saturating_duration_since(sent_at);
            Dialled::Live(call)
        }
        _ => {
            caller.graph.forget(&call_id);
            call.stop_media().await;
            Dialled::Failed("no accept".into())
        }
    }
}

impl LiveCall {
    pub fn stats(&self) -> PhoneStats {
        self.stats.lock().clone()
    }

    /// Starts the steady-state window: late and bunched packets and the longest gap count from
    /// here (the connect burst before it is measured as setup time).
    pub fn begin_hold(&self) {
        let mut stats = self.stats.lock();
        stats.late = 0;
        stats.bunched = 0;
        stats.max_gap_ms = 0.0;
    }

    /// The user hangs up: media stops, Meta sends `terminate`. Returns the phone's counters.
    pub async fn hang_up(mut self, caller: &Caller) -> (PhoneStats, Option<String>) {
        self.stop_media().await;
        let body = webhooks::terminate(
            &caller.line,
            &self.call_id,
            &self.user,
            unix_now(),
            Some(1),
            false,
        );
        let problem = match caller.post_to(self.key + 1, body).await {
            Ok(reply) if (200..300).contains(&reply.status) => None,
            Ok(reply) => Some(format!("terminate answered {}", reply.status)),
            Err(err) => Some(format!("terminate: {err:#}")),
        };
        (self.stats(), problem)
    }

    /// The caller vanishes: its media stops and its peer closes, but no `terminate` follows;
    /// the bridge has to notice by itself. Returns the phone's counters.
    pub async fn vanish(mut self) -> PhoneStats {
        self.stop_media().await;
        self.stats()
    }

    async fn stop_media(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(media) = self.media.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), media).await;
        }
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        if let Some(media) = self.media.take() {
            media.abort();
        }
    }
}

/// Sends the clip every 20 ms once connected; counts and times what arrives.
async fn run_media(
    mut peer: MediaPeer,
    clip: Arc<Clip>,
    stats: Arc<Mutex<PhoneStats>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(mut decoder) = OpusDecoder::new() else {
        peer.close().await;
        return;
    };
    let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
    let mut onsets = OnsetDetector::default();
    // Each phone's 20 ms clock has its own phase, as real callers' clocks do. Phones answered
    // in the same millisecond (a burst's `pre_accept`s arrive together) would otherwise send
    // every packet in step, and the bridge would get each period's uplink (and the AI's
    // echoes timed from it) in one clump.
    let frame = Duration::from_millis(u64::from(FRAME_MS));
    let phase = Duration::from_micros(rand::random_range(0..frame.as_micros() as u64));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, frame);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut connected = false;
    // Each phone starts at its own point of the clip: real callers do not all speak at once,
    // and callers in step would make the bridge's load (and the AI's answers) come in waves.
    let mut frame = rand::random_range(0..clip.packets.len());
    let mut sequence_number: u16 = rand::random();
    let mut timestamp: u32 = rand::random();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = peer.next_event() => match event {
                Some(PeerEvent::Connected) => connected = true,
                Some(PeerEvent::Gone) | None => break,
                // The bridge's reports about the caller's stream: nothing to measure here.
                Some(PeerEvent::LossReport(_)) => {}
                Some(PeerEvent::Rtp(rtp)) => {
                    let now = Instant::now();
                    let onset = decoder
                        .decode(&rtp.payload, &mut pcm)
                        .is_ok_and(|samples| onsets.feed(&pcm[..samples]));
                    let mut stats = stats.lock();
                    stats.on_packet(now, rtp.sequence_number, rtp.timestamp);
                    if onset {
                        stats.onsets_heard.push(now);
                    }
                }
            },
            _ = ticker.tick() => {
                if !connected {
                    continue;
                }
                let index = frame % clip.packets.len();
                let payload = clip.packets[index].clone();
                let now = Instant::now();
                if peer.write_opus(sequence_number, timestamp, payload).await.is_ok() {
                    let mut stats = stats.lock();
                    stats.packets_sent += 1;
                    if index == 0 {
                        stats.markers_sent.push(now);
                    }
                }
                frame += 1;
                sequence_number = sequence_number.wrapping_add(1);
                timestamp = timestamp.wrapping_add(RTP_TIMESTAMP_STEP);
            }
        }
    }
    peer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_sequence_numbers_count_as_loss_and_gaps_in_time_as_late() {
        let t0 = Instant::now();
        let mut stats = PhoneStats::default();
        stats.on_packet(t0, 65534, 0);
        stats.on_packet(t0 + Duration::from_millis(20), 65535, 960);
        // 0 and 1 never arrive; 2 comes 60 ms after 65535.
        stats.on_packet(t0 + Duration::from_millis(80), 2, 960 * 4);
        stats.on_packet(t0 + Duration::from_millis(82), 3, 960 * 5);
        assert_eq!(stats.packets_received, 4);
        assert_eq!(stats.packets_lost, 2);
        assert_eq!(stats.late, 1);
        assert_eq!(stats.bunched, 1);
        assert!((stats.max_gap_ms - 60.0).abs() < 0.5);
    }
}
