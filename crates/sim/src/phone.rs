//! A simulated WhatsApp caller: a real WebRTC peer that offers like Meta (§8.1), sends the signed
//! `connect` and `terminate` webhooks, takes the bridge's answer from the Graph API double,
//! streams real Opus from PCM, and records what it hears.
//!
//! On the wire its offer carries `a=mid:audio` like Meta's; webrtc-rs 0.21 names its section
//! `0` and has no working mid generator, so the phone renames it on the way out and back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::graph_double::GraphDouble;
use crate::loss::{self, CallLoss, WireLossCounts};
use crate::webhooks::{self, BusinessLine};
use bridge::ids::{CallId, PhoneNumber};
use bridge::media::codec::{
    EncoderSettings, MAX_OPUS_PACKET, OpusEncoder, RTP_TIMESTAMP_STEP, SAMPLES_PER_FRAME,
    carries_fec,
};
use bridge::media::peer::{LossReport, MediaPeer, OPUS_PAYLOAD_TYPE, PeerEvent, PeerSettings};
use bridge::media::uplink::UplinkDecoder;
use bridge::whatsapp::signature;

/// How long the phone waits for the bridge's `pre_accept`.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Where the phone calls and how it signs.
#[derive(Clone)]
pub struct PhoneSettings {
    /// The bridge's base URL, e.g. `http://127.0.0.1:8080`.
    pub bridge_url: String,
    pub app_secret: String,
    pub line: BusinessLine,
    pub graph: GraphDouble,
    pub peer: PeerSettings,
    pub http: reqwest::Client,
    /// Packets the phone's wire loses, each direction (none by default).
    pub loss: CallLoss,
}

impl PhoneSettings {
    /// A phone on loopback calling the bridge at `bridge_url` (signing with `app_secret`) on the
    /// default business line, with `graph` as Meta's side.
    pub fn on_loopback(
        bridge_url: String,
        app_secret: &str,
        graph: GraphDouble,
        http: reqwest::Client,
    ) -> Self {
        Self {
            bridge_url,
            app_secret: app_secret.to_owned(),
            line: BusinessLine::default(),
            graph,
            peer: PeerSettings {
                loopback: true,
                ..PeerSettings::default()
            },
            http,
            loss: CallLoss::NONE,
        }
    }
}

/// The webhook answer to the phone's `connect`.
#[derive(Clone, Debug)]
pub struct WebhookReply {
    pub status: u16,
    pub body: String,
}

impl WebhookReply {
    /// Why the bridge refused the call this webhook offered, if it did: 200 with
    /// `{"status":"refused","reason":…}` when it declined the call with `reject`, 503 with
    /// `{"error":…}` when it could not.
    pub fn refusal(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        let reason = match self.status {
            200 if body["status"] == "refused" => &body["reason"],
            503 => &body["error"],
            _ => return None,
        };
        reason.as_str().map(str::to_owned)
    }
}

/// What the phone heard and sent, shared with its media task.
#[derive(Debug, Default)]
pub struct Recording {
    /// Everything received, decoded to 24 kHz as a phone plays it: a lost packet becomes a
    /// frame rebuilt from the next one's FEC or concealed, so the audio keeps time.
    pub received: Vec<i16>,
    /// Frames of `received` concealed (PLC) and rebuilt from FEC in place of lost packets.
    pub concealed_frames: u64,
    pub fec_recovered_frames: u64,
    /// Arrival time of each received packet and the sample offset where its audio starts.
    pub arrivals: Vec<(Instant, usize)>,
    pub packets_received: u64,
    /// Received packets that carry in-band FEC for the frame before them.
    pub fec_packets_received: u64,
    /// The payload of every packet received, in arrival order (Opus, or whatever came).
    pub payloads: Vec<bytes::Bytes>,
    /// Receiver reports the phone sent with [`PhoneCall::report_loss`].
    pub loss_reports_sent: u64,
    pub packets_sent: u64,
    pub first_rtp_at: Option<Instant>,
    /// Set when the connection reported connected.
    pub connected_at: Option<Instant>,
    /// Set when the connection closed or failed.
    pub disconnected_at: Option<Instant>,
}

enum PhoneCommand {
    Say(Vec<i16>),
    Press(Vec<u8>),
    /// Send a receiver report about the bridge's stream stating this fraction lost.
    ReportLoss(u8),
    Close(oneshot::Sender<()>),
}

/// One simulated call from a phone to the bridge.
pub struct PhoneCall {
    pub call_id: CallId,
    pub user: PhoneNumber,
    pub reply: WebhookReply,
    /// The bridge placed the call (picked up) rather than answering it (dialled): Meta's
    /// `terminate` then reads from the business to the user.
    business_initiated: bool,
    settings: PhoneSettings,
    recording: Arc<Mutex<Recording>>,
    /// Notified whenever the recording changes.
    changed: Arc<Notify>,
    commands: Option<mpsc::Sender<PhoneCommand>>,
    media: Option<JoinHandle<()>>,
    /// The peer until the media task takes it (refused calls keep it here to close it).
    peer: Option<MediaPeer>,
    /// When the phone's speech queue runs dry.
    speaking_until: Arc<Mutex<Instant>>,
    /// Packets its wire lost (see [`PhoneSettings::loss`]).
    wire_losses: Arc<WireLossCounts>,
}

/// Unix seconds now, as Meta stamps events.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends a signed webhook body to the bridge, as Meta does.
pub async fn post_webhook(
    http: &reqwest::Client,
    bridge_url: &str,
    app_secret: &str,
    body: String,
) -> anyhow::Result<WebhookReply> {
    let signature = signature::sign(app_secret.as_bytes(), body.as_bytes());
    let response = http
        .post(format!("{bridge_url}/webhook"))
        .header("content-type", "application/json")
        .header(signature::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok(WebhookReply { status, body })
}

impl PhoneCall {
    /// Dials the bridge: makes the offer, sends the signed `connect` webhook and, unless the
    /// bridge refused, waits for its answer (`pre_accept` at the Graph double) and starts media.
    pub async fn dial(
        settings: PhoneSettings,
        call_id: CallId,
        user: PhoneNumber,
        user_name: &str,
    ) -> anyhow::Result<PhoneCall> {
        let wire_losses = Arc::new(WireLossCounts::default());
        let mut peer = loss::phone_peer(&settings.peer, settings.loss, &wire_losses).await?;
        let local_offer = peer.offer().await?;
        let wire_offer = rename_mid(&local_offer, "0", "audio");
        settings.graph.register_offer(&call_id, &wire_offer);
        let body = webhooks::connect_offer(
            &settings.line,
            &call_id,
            &user,
            user_name,
            &wire_offer,
            unix_now(),
        );
        let reply = post_webhook(
            &settings.http,
            &settings.bridge_url,
            &settings.app_secret,
            body,
        )
        .await?;
        let mut call = PhoneCall {
            call_id,
            user,
            reply,
            business_initiated: false,
            settings,
            recording: Arc::new(Mutex::new(Recording::default())),
            changed: Arc::new(Notify::new()),
            commands: None,
            media: None,
            peer: Some(peer),
            speaking_until: Arc::new(Mutex::new(Instant::now())),
            wire_losses,
        };
        if call.reply.status != 200 || call.reply.refusal().is_some() {
            return Ok(call);
        }
        let answer = call
            .settings
            .graph
            .wait_for(&call.call_id, "pre_accept", ANSWER_WAIT)
            .await
            .and_then(|action| action.sdp)
            .ok_or_else(|| anyhow::anyhow!("the bridge sent no pre_accept"))?;
        let Some(peer) = call.peer.take() else {
            anyhow::bail!("peer already taken");
        };
        peer.apply_answer(&rename_mid(&answer, "audio", "0"))
            .await?;
        call.start_media(peer)?;
        Ok(call)
    }

    /// Picks up a call the bridge placed, the way Meta and the user's app do (§7.2): answers the
    /// bridge's offer, sends the `connect` webhook carrying the answer, then the `RINGING` and
    /// `ACCEPTED` statuses, and starts media.
    pub async fn pick_up(
        settings: PhoneSettings,
        call_id: CallId,
        user: PhoneNumber,
        offer_sdp: &str,
    ) -> anyhow::Result<PhoneCall> {
        let wire_losses = Arc::new(WireLossCounts::default());
        let mut peer = loss::phone_peer(&settings.peer, settings.loss, &wire_losses).await?;
        let answer = peer.answer(offer_sdp).await?;
        let post = |body: String| {
            post_webhook(
                &settings.http,
                &settings.bridge_url,
                &settings.app_secret,
                body,
            )
        };
        let line = &settings.line;
        let reply = post(webhooks::connect_answer(
            line,
            &call_id,
            &user,
            &answer,
            unix_now(),
        ))
        .await?;
        for status in ["RINGING", "ACCEPTED"] {
            let status_reply =
                post(webhooks::status(line, &call_id, &user, status, unix_now())).await?;
            anyhow::ensure!(
                status_reply.status == 200,
                "{status} webhook answered {}",
                status_reply.status
            );
        }
        let mut call = PhoneCall {
            call_id,
            user,
            reply,
            business_initiated: true,
            settings: settings.clone(),
            recording: Arc::new(Mutex::new(Recording::default())),
            changed: Arc::new(Notify::new()),
            commands: None,
            media: None,
            peer: None,
            speaking_until: Arc::new(Mutex::new(Instant::now())),
            wire_losses,
        };
        call.start_media(peer)?;
        Ok(call)
    }

    fn start_media(&mut self, peer: MediaPeer) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel(16);
        let media = PhoneMedia {
            peer,
            encoder: OpusEncoder::new(EncoderSettings::default())?,
            decoder: UplinkDecoder::new(true)?,
            recording: self.recording.clone(),
            changed: self.changed.clone(),
            outgoing: VecDeque::new(),
            keys: KeySender::default(),
            speaking_until: self.speaking_until.clone(),
        };
        self.commands = Some(tx);
        self.media = Some(tokio::spawn(media.run(rx)));
        Ok(())
    }

    /// Queues speech (24 kHz PCM16) to send after whatever is still queued.
    pub async fn say(&self, pcm: Vec<i16>) {
        let duration = Duration::from_millis((pcm.len() / 24) as u64);
        {
            let mut until = self.speaking_until.lock();
            *until = (*until).max(Instant::now()) + duration;
        }
        if let Some(commands) = &self.commands {
            let _ = commands.send(PhoneCommand::Say(pcm)).await;
        }
    }

    /// Presses keys of the keypad (`0`–`9`, `*`, `#`, `A`–`D`; others are ignored), one after
    /// another, as RFC 4733 telephone events sent instead of audio, as a phone sends them: a
    /// first packet with the marker bit, one every 20 ms as the press lasts (100 ms), then its
    /// end packet three times over.
    pub async fn press(&self, keys: &str) {
        let codes = keys
            .chars()
            .filter_map(|key| "0123456789*#ABCD".find(key))
            .map(|code| code as u8)
            .collect();
        if let Some(commands) = &self.commands {
            let _ = commands.send(PhoneCommand::Press(codes)).await;
        }
    }

    /// Sends the bridge an RTCP receiver report about its stream that states `fraction_lost`
    /// (in 256ths) since the last one, as a phone losing packets would; the phone's own
    /// reports (its WebRTC stack's, about what really arrived) go on as well.
    pub async fn report_loss(&self, fraction_lost: u8) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(PhoneCommand::ReportLoss(fraction_lost)).await;
        }
    }

    /// When everything queued with [`PhoneCall::say`] will have been sent.
    pub fn speaking_until(&self) -> Instant {
        *self.speaking_until.lock()
    }

    /// RTP packets the phone's wire lost so far: (uplink, downlink).
    pub fn wire_losses(&self) -> (u64, u64) {
        self.wire_losses.get()
    }

    pub fn recording(&self) -> Arc<Mutex<Recording>> {
        self.recording.clone()
    }

    /// Waits until the connection is up (bounded).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.connected_at.is_some()).await
    }

    /// Waits until `condition` holds on the recording, re-checking at every change (bounded).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&Recording) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.recording.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.recording.lock());
            }
        }
    }

    /// The user hangs up: Meta sends `terminate` (and knows the user is free again) and the
    /// media stops.
    pub async fn hang_up(mut self) -> anyhow::Result<WebhookReply> {
        self.stop_media().await;
        self.settings.graph.note_call_ended(&self.call_id);
        let line = &self.settings.line;
        let body = if self.business_initiated {
            webhooks::bic_terminate(line, &self.call_id, &self.user, unix_now(), Some(1))
        } else {
            webhooks::terminate(line, &self.call_id, &self.user, unix_now(), Some(1), false)
        };
        post_webhook(
            &self.settings.http,
            &self.settings.bridge_url,
            &self.settings.app_secret,
            body,
        )
        .await
    }

    /// The phone vanishes without any webhook: only its media stops (the bridge must notice).
    pub async fn drop_media(mut self) {
        self.stop_media().await;
    }

    /// Ends the media side only (used after the bridge ended the call).
    pub async fn stop_media(&mut self) {
        if let Some(commands) = self.commands.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if commands.send(PhoneCommand::Close(done_tx)).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
            }
        }
        if let Some(media) = self.media.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), media).await;
        }
        if let Some(peer) = self.peer.take() {
            peer.close().await;
        }
    }
}

impl Drop for PhoneCall {
    fn drop(&mut self) {
        if let Some(media) = self.media.take() {
            media.abort();
        }
    }
}

/// Renames the audio section's mid (and the BUNDLE group) in an SDP.
pub(crate) fn rename_mid(sdp: &str, from: &str, to: &str) -> String {
    sdp.replace(&format!("a=mid:{from}\r\n"), &format!("a=mid:{to}\r\n"))
        .replace(
            &format!("a=group:BUNDLE {from}\r\n"),
            &format!("a=group:BUNDLE {to}\r\n"),
        )
}

/// The phone's media loop: sends 20 ms Opus frames (queued speech or silence), records what
/// arrives.
struct PhoneMedia {
    peer: MediaPeer,
    encoder: OpusEncoder,
    /// The bridge's own receive path (FEC from the next packet, else PLC), as a phone's.
    decoder: UplinkDecoder,
    recording: Arc<Mutex<Recording>>,
    changed: Arc<Notify>,
    outgoing: VecDeque<i16>,
    speaking_until: Arc<Mutex<Instant>>,
    keys: KeySender,
}

/// Packets of a press while it lasts (20 ms apart), then its three end packets.
const PRESS_PACKETS: u16 = 5;
const PRESS_END_COPIES: usize = 3;
/// Telephone-event durations count 8 kHz units: 20 ms is 160.
const EVENT_UNITS_PER_FRAME: u16 = 160;
/// Audio frames sent between two presses.
const FRAMES_BETWEEN_PRESSES: u16 = 2;

/// What a phone sends in one 20 ms slot of a press: the event's RTP timestamp and its
/// packets (marker bit, payload).
struct PressPackets {
    timestamp: u32,
    packets: Vec<(bool, [u8; 4])>,
}

/// The keys still to press, and how far the current press is.
#[derive(Default)]
struct KeySender {
    queued: VecDeque<u8>,
    /// The key being pressed, the RTP timestamp it started at, and its frames so far.
    current: Option<(u8, u32, u16)>,
    /// Audio frames still to send before the next press.
    pause: u16,
}

impl KeySender {
    /// The telephone-event packets to send instead of this frame's audio; `None`: send audio.
    fn frame(&mut self, timestamp: u32) -> Option<PressPackets> {
        if self.current.is_none() {
            if self.pause > 0 {
                self.pause -= 1;
                return None;
            }
            self.current = Some((self.queued.pop_front()?, timestamp, 0));
        }
        let (code, start, frames) = self.current.as_mut()?;
        *frames += 1;
        let duration = (*frames).min(PRESS_PACKETS) * EVENT_UNITS_PER_FRAME;
        let [high, low] = duration.to_be_bytes();
        const VOLUME: u8 = 10;
        let (code, start, frames) = (*code, *start, *frames);
        if frames <= PRESS_PACKETS {
            return Some(PressPackets {
                timestamp: start,
                packets: vec![(frames == 1, [code, VOLUME, high, low])],
            });
        }
        self.current = None;
        self.pause = FRAMES_BETWEEN_PRESSES;
        let end = [code, 0x80 | VOLUME, high, low];
        Some(PressPackets {
            timestamp: start,
            packets: vec![(false, end); PRESS_END_COPIES],
        })
    }
}

impl PhoneMedia {
    async fn run(mut self, mut commands: mpsc::Receiver<PhoneCommand>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut connected = false;
        let mut sequence_number: u16 = rand::random();
        let mut timestamp: u32 = rand::random();
        let mut frame = vec![0i16; SAMPLES_PER_FRAME];
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let mut decoded = Vec::with_capacity(SAMPLES_PER_FRAME * 8);
        // The bridge's stream as the phone's reports name it: its SSRC and the highest
        // sequence number received, extended with its wraps (RFC 3550 §6.4.1).
        let mut bridge_ssrc = None;
        let mut highest_sequence: Option<u32> = None;
        let mut cumulative_lost = 0u32;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(PhoneCommand::Say(pcm)) => self.outgoing.extend(pcm),
                    Some(PhoneCommand::Press(codes)) => self.keys.queued.extend(codes),
                    Some(PhoneCommand::ReportLoss(fraction_lost)) => {
                        let (Some(ssrc), Some(highest)) = (bridge_ssrc, highest_sequence) else {
                            continue;
                        };
                        cumulative_lost += u32::from(fraction_lost);
                        let report = LossReport {
                            ssrc,
                            fraction_lost,
                            cumulative_lost,
                            highest_sequence: highest,
                            jitter: 0,
                            last_sender_report: 0,
                        };
                        if self.peer.write_loss_report(&report).await.is_ok() {
                            self.recording.lock().loss_reports_sent += 1;
                        }
                    }
                    Some(PhoneCommand::Close(done)) => {
                        self.peer.close().await;
                        self.recording.lock().disconnected_at.get_or_insert(Instant::now());
                        self.changed.notify_waiters();
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.peer.close().await;
                        return;
                    }
                },
                event = self.peer.next_event() => match event {
                    Some(PeerEvent::Connected) => {
                        connected = true;
                        self.recording.lock().connected_at = Some(Instant::now());
                    }
                    Some(PeerEvent::Gone) | None => {
                        connected = false;
                        self.recording.lock().disconnected_at.get_or_insert(Instant::now());
                    }
                    Some(PeerEvent::LossReport(_)) => {}
                    Some(PeerEvent::Rtp(rtp)) => {
                        let now = Instant::now();
                        bridge_ssrc = Some(rtp.ssrc);
                        highest_sequence = Some(extend_sequence(highest_sequence, rtp.sequence_number));
                        decoded.clear();
                        if rtp.payload_type == OPUS_PAYLOAD_TYPE {
                            self.decoder.push(rtp.sequence_number, &rtp.payload, &mut decoded);
                        } else {
                            self.decoder.skip(rtp.sequence_number);
                        }
                        let stats = self.decoder.stats();
                        let mut recording = self.recording.lock();
                        recording.first_rtp_at.get_or_insert(now);
                        recording.packets_received += 1;
                        recording.fec_packets_received += u64::from(carries_fec(&rtp.payload));
                        recording.payloads.push(rtp.payload.clone());
                        let offset = recording.received.len();
                        recording.arrivals.push((now, offset));
                        recording.received.extend_from_slice(&decoded);
                        recording.concealed_frames = stats.concealed;
                        recording.fec_recovered_frames = stats.fec_recovered;
                    }
                },
                _ = ticker.tick() => {
                    if !connected {
                        continue;
                    }
                    if let Some(press) = self.keys.frame(timestamp) {
                        let start = press.timestamp;
                        for (marker, payload) in press.packets {
                            let payload = bytes::Bytes::copy_from_slice(&payload);
                            let sent = self
                                .peer
                                .write_telephone_event(sequence_number, start, marker, payload)
                                .await;
                            if sent.is_ok() {
                                self.recording.lock().packets_sent += 1;
                            }
                            sequence_number = sequence_number.wrapping_add(1);
                        }
                        timestamp = timestamp.wrapping_add(RTP_TIMESTAMP_STEP);
                        continue;
                    }
                    for slot in frame.iter_mut() {
                        *slot = self.outgoing.pop_front().unwrap_or(0);
                    }
                    if self.outgoing.is_empty() {
                        let mut until = self.speaking_until.lock();
                        *until = (*until).min(Instant::now());
                    }
                    let Ok(length) = self.encoder.encode(&frame, &mut packet) else {
                        continue;
                    };
                    let payload = bytes::Bytes::copy_from_slice(&packet[..length]);
                    if self.peer.write_opus(sequence_number, timestamp, payload).await.is_ok() {
                        self.recording.lock().packets_sent += 1;
                    }
                    sequence_number = sequence_number.wrapping_add(1);
                    timestamp = timestamp.wrapping_add(RTP_TIMESTAMP_STEP);
                }
            }
            self.changed.notify_waiters();
        }
    }
}

/// `sequence` extended with the wraps counted so far into the highest extended sequence
/// number received (a late, older packet leaves it as it was).
fn extend_sequence(highest: Option<u32>, sequence: u16) -> u32 {
    let Some(highest) = highest else {
        return u32::from(sequence);
    };
    let delta = sequence.wrapping_sub(highest as u16) as i16;
    if delta > 0 {
        highest.wrapping_add(delta as u32)
    } else {
        highest
    }
}

#[cfg(test)]
mod tests {
    use super::{extend_sequence, rename_mid};

    #[test]
    fn the_highest_sequence_number_counts_its_wraps_and_ignores_late_packets() {
        assert_eq!(extend_sequence(None, 65_535), 65_535);
        assert_eq!(extend_sequence(Some(65_535), 2), 65_538);
        assert_eq!(extend_sequence(Some(65_538), 65_534), 65_538);
        assert_eq!(extend_sequence(Some(65_538), 3), 65_539);
    }

    #[test]
    fn the_mid_is_renamed_in_the_section_and_the_bundle() {
        let sdp = "v=0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        let wire = rename_mid(sdp, "0", "audio");
        assert!(wire.contains("a=group:BUNDLE audio\r\n") && wire.contains("a=mid:audio\r\n"));
        assert_eq!(rename_mid(&wire, "audio", "0"), sdp);
    }
}
