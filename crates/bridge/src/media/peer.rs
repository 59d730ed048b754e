//! One WebRTC PeerConnection for one call, set up the way Meta requires (whatsapp-calling §8).
//!
//! Audio only: Opus on PT 111 and telephone-event on PT 126, one outgoing SSRC for the whole
//! call, DTLS client when answering (`a=setup:active`), no mDNS, a short ICE check interval,
//! RTCP sender/receiver reports on. Events from the connection (state changes, the caller's
//! track) are forwarded into a bounded channel read by the call task that owns this peer. The
//! far end's reception reports (how much of what we send it loses) are handed to the call too:
//! an interceptor lets them past the end of the chain, where inbound RTCP otherwise stops.
//! Test doubles (the simulated phones) can also lose RTP on the wire ([`WireLoss`]).
//!
//! This is the one file that names the WebRTC crate's types: everything else speaks in
//! [`PeerEvent`] and [`RtpPacket`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rtc::crypto::SignatureScheme;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::transport::{RTCDtlsRole, RTCIceCandidateType};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};

use super::ports::{PortLease, PortPool};

/// Opus payload type, as Meta offers it.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// The Opus parameters the bridge declares: 20 ms packets, and FEC welcome in what it receives.
pub const BRIDGE_OPUS_FMTP: &str = "minptime=20;useinbandfec=1";
/// RFC 4733 telephone-event payload type at 8 kHz, as Meta offers it.
pub const TELEPHONE_EVENT_PAYLOAD_TYPE: u8 = 126;
/// Events queued from the connection's driver to the call task. Few and small (state changes
/// and one track); if the call task is gone the events are dropped, which is what we want.
const PEER_EVENT_CAPACITY: usize = 16;
/// Consent checks run every second; after 2 s without an answer the path counts as disconnected
/// and 3 s later as failed, which ends the call as `caller_gone`. The path is server to server
/// (our host to Meta's relay), so a longer outage means the call is lost anyway (§7.4), and a
/// caller who vanished without a `terminate` is noticed within about 5 s.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(2);
const ICE_FAILED_AFTER: Duration = Duration::from_secs(3);
const ICE_KEEPALIVE: Duration = Duration::from_secs(1);
/// The bridge is the controlling agent against Meta's ICE-lite side, so its check pacing sets the
/// connect time: one tick to find a working pair and one to nominate it, then DTLS. With 20 ms a
/// loopback connect took about 45 ms; RFC 8445 allows pacing down to 5 ms. 50 requests keep the
/// 500 ms a pair may take to answer.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(10);
const ICE_MAX_BINDING_REQUESTS: u16 = 50;
/// Where the reception-report forwarder sits: after every interceptor of the chain (the report
/// interceptors at 10 000 and 11 000), just before the terminus that ends inbound RTCP.
const REPORT_FORWARDER_SLOT: usize = 14_000;
/// Where a test double's packet dropper sits: before every interceptor of the chain on the
/// way in (so the receiver reports at 10 000 count its drops as loss) and after every one on the
/// way out (so the sender reports count the dropped packets as sent): the wire.
const WIRE_LOSS_SLOT: usize = 500;
/// How long candidate gathering may take before the SDP is sent without waiting further.
const GATHERING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the bridge uses one DTLS certificate before making a new one.
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The bridge's DTLS certificate, shared by its calls and renewed daily. Making a key pair and a
/// self-signed certificate for every call was about a tenth of building the connection and
/// answering the offer, and nothing asks for a fresh one: the far end only checks the
/// certificate against the fingerprint in our SDP (WebRTC lets an application reuse a certificate
/// across connections; SFUs use one per process). `None` if it cannot be made: the connection
/// then makes its own, as before.
fn bridge_certificate() -> Option<RTCCertificate> {
    static CURRENT: Mutex<Option<(RTCCertificate, Instant)>> = Mutex::new(None);
    let mut current = CURRENT.lock();
    if let Some((certificate, made)) = current.as_ref()
        && made.elapsed() < CERTIFICATE_LIFETIME
    {
        return Some(certificate.clone());
    }
    let made = rtc::crypto::default_provider()
        .map_err(|err| err.to_string())
        .and_then(|provider| {
            let params = CertificateParams::new(vec!["whatsapp-voice-bridge".to_owned()])
                .map_err(|err| err.to_string())?;
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(|err| err.to_string())
        });
    match made {
        Ok(certificate) => {
            *current = Some((certificate.clone(), Instant::now()));
            Some(certificate)
        }
        Err(err) => {
            tracing::warn!(%err, "no shared DTLS certificate; each call makes its own");
            None
        }
    }
}

/// Which side of a WhatsApp call this peer plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerProfile {
    /// The bridge: answers Meta's offers (or offers for outbound calls) per §8.2 / §8.6.
    Bridge,
    /// The simulated WhatsApp side: offers like Meta (§8.1: wideband Opus with FEC).
    SimulatedPhone,
}

/// Network settings shared by every call of the process.
#[derive(Clone, Debug, Default)]
pub struct PeerSettings {
    /// Use only 127.0.0.1 (tests, demo).
    pub loopback: bool,
    /// Address advertised instead of the local one, behind 1:1 NAT.
    pub public_ip: Option<IpAddr>,
    pub stun_urls: Vec<String>,
    /// When set, each call binds one port from this pool.
    pub ports: Option<PortPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("every UDP port of WEBRTC_UDP_PORTS is in use")]
    NoFreePort,
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error("no local description after negotiation")]
    NoLocalDescription,
}

impl From<webrtc::error::Error> for PeerError {
    fn from(err: webrtc::error::Error) -> Self {
        Self::WebRtc(err.to_string())
    }
}

/// What the connection tells its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow both ways.
    Connected,
    /// The connection failed or was closed: the far end is gone.
    Gone,
    /// One RTP packet from the far end.
    Rtp(RtpPacket),
    /// One reception report block from the far end's RTCP (receiver or sender report): how a
    /// stream it receives fares. Ours carries our [`MediaPeer::ssrc`].
    LossReport(LossReport),
}

/// What one RTCP reception report block says (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossReport {
    /// The stream reported on.
    pub ssrc: u32,
    /// Packets lost since the previous report, in 256ths of those expected.
    pub fraction_lost: u8,
    /// Packets lost since the stream began (24 bits).
    pub cumulative_lost: u32,
    /// The highest sequence number received, with its wrap count in the top 16 bits: a newer
    /// report carries a larger one.
    pub highest_sequence: u32,
    /// Interarrival jitter, in RTP timestamp units (48 kHz for Opus).
    pub jitter: u32,
    /// The middle of the NTP time of our last sender report the far end received; 0 before any.
    pub last_sender_report: u32,
}

impl From<&ReceptionReport> for LossReport {
    fn from(block: &ReceptionReport) -> Self {
        Self {
            ssrc: block.ssrc,
            fraction_lost: block.fraction_lost,
            cumulative_lost: block.total_lost,
            highest_sequence: block.last_sequence_number,
            jitter: block.jitter,
            last_sender_report: block.last_sender_report,
        }
    }
}

impl From<&LossReport> for ReceptionReport {
    fn from(report: &LossReport) -> Self {
        Self {
            ssrc: report.ssrc,
            fraction_lost: report.fraction_lost,
            total_lost: report.cumulative_lost,
            last_sequence_number: report.highest_sequence,
            jitter: report.jitter,
            last_sender_report: report.last_sender_report,
            delay: 0,
        }
    }
}

/// The reception report blocks of a receiver or sender report (none for other packets).
fn report_blocks(packet: &dyn rtc::rtcp::Packet) -> &[ReceptionReport] {
    let any = packet.as_any();
    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else {
        &[]
    }
}

/// What a [`PacketFilter`] does with one packet in one direction: it may change it, and says
/// whether to pass it on (`false`: dropped).
type PacketStep = Box<dyn FnMut(&mut TaggedPacket) -> bool + Send>;

/// An interceptor that passes every packet on through its step for the direction: the two
/// interceptors the bridge adds differ only in what they do to a packet.
struct PacketFilter {
    /// Behind locks only so the interceptor is `Sync`; reached through `&mut self`, never
    /// contended.
    on_read: Mutex<PacketStep>,
    on_write: Mutex<PacketStep>,
    reads: std::collections::VecDeque<TaggedPacket>,
    writes: std::collections::VecDeque<TaggedPacket>,
}

impl PacketFilter {
    fn new(on_read: PacketStep, on_write: PacketStep) -> Self {
        Self {
            on_read: Mutex::new(on_read),
            on_write: Mutex::new(on_write),
            reads: Default::default(),
            writes: Default::default(),
        }
    }

    /// Lets the far end's reception reports reach the application. Inbound RTCP ends at the
    /// end of the chain (the report interceptors before this one have used it) unless an
    /// interceptor marks it [`Attribute::DeliverToApplication`]; this marks the receiver and
    /// sender reports that carry report blocks, and keeps only those of the packet. The stack
    /// routes an RTCP packet by the first SSRC it is about, so a packet that now starts with a
    /// block about our stream goes to our outgoing track's events even when the far end put
    /// something else first.
    fn report_forwarder() -> Self {
        let forward = |msg: &mut TaggedPacket| {
            if let Packet::Rtcp(packets) = &mut msg.message.packet
                && packets
                    .iter()
                    .any(|packet| !report_blocks(packet.as_ref()).is_empty())
            {
                packets.retain(|packet| !report_blocks(packet.as_ref()).is_empty());
                msg.message.add(Attribute::DeliverToApplication);
            }
            true
        };
        Self::new(Box::new(forward), Box::new(|_| true))
    }

    /// Drops RTP packets as `loss` says, at [`WIRE_LOSS_SLOT`]; RTCP always passes.
    fn wire_dropper(loss: WireLoss) -> Self {
        let WireLoss {
            mut inbound,
            mut outbound,
        } = loss;
        let rtp = |msg: &TaggedPacket| matches!(msg.message.packet, Packet::Rtp(_));
        Self::new(
            Box::new(move |msg| !(rtp(msg) && inbound())),
            Box::new(move |msg| !(rtp(msg) && outbound())),
        )
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for PacketFilter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if (self.on_read.get_mut())(&mut msg) {
            self.reads.push_back(msg);
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if (self.on_write.get_mut())(&mut msg) {
            self.writes.push_back(msg);
        }
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.writes.pop_front()
    }
}

impl Interceptor for PacketFilter {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Decides, packet by packet, whether the wire loses it (`true`: lost).
pub type DropDecision = Box<dyn FnMut() -> bool + Send>;

/// The packets a test double's connection loses on the wire, each direction decided apart.
/// Only RTP is lost; RTCP always passes, so the reports about the loss get through.
pub struct WireLoss {
    /// Asked for every RTP packet arriving from the far end.
    pub inbound: DropDecision,
    /// Asked for every RTP packet this peer sends.
    pub outbound: DropDecision,
}

/// One received RTP packet: what the bridge reads of it.
#[derive(Debug)]
pub struct RtpPacket {
    /// The sender's stream.
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload: bytes::Bytes,
}

/// What the connection's driver reports, before [`MediaPeer::next_event`] makes it a
/// [`PeerEvent`] (or keeps it: the remote track, gathering).
enum DriverEvent {
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    GatheringComplete,
}

/// Forwards driver callbacks into the call task's channel without ever blocking the driver.
struct EventForwarder {
    tx: mpsc::Sender<DriverEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventForwarder {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.try_send(DriverEvent::State(state));
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.try_send(DriverEvent::GatheringComplete);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // A track is delivered once; wait for room rather than lose it.
        let _ = self.tx.send(DriverEvent::Track(track)).await;
    }
}

/// One call's PeerConnection, its outgoing track and (when a port range is set) its port.
pub struct MediaPeer {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    events: mpsc::Receiver<DriverEvent>,
    /// Events that arrived while waiting for gathering, delivered before newer ones.
    pending: std::collections::VecDeque<DriverEvent>,
    gathering_complete: bool,
    /// The far end's audio track, once it has arrived and until it ends.
    remote: Option<Arc<dyn TrackRemote>>,
    /// Reception report blocks received and not yet returned by [`MediaPeer::next_event`].
    reports: std::collections::VecDeque<LossReport>,
    /// The outgoing track's feedback (RTCP about what we send) can still arrive: bound from
    /// `add_track` on, until the connection closes.
    feedback_open: bool,
    /// Released when the peer is dropped, after the connection is closed.
    _port: Option<PortLease>,
}

impl MediaPeer {
    /// Builds the connection. `port` is this call's leased port when a range is configured
    /// (leased at admission, so a full range refuses the call before anything is spawned).
    pub async fn new(
        settings: &PeerSettings,
        profile: PeerProfile,
        port: Option<PortLease>,
    ) -> Result<Self, PeerError> {
        Self::build(settings, profile, port, None).await
    }

    /// A simulated phone's connection whose RTP is lost on the wire as `loss` decides: its
    /// own receiver reports count the inbound drops as loss, and the far end sees the outbound
    /// drops as gaps. For test doubles only; the bridge's peers never lose packets on purpose.
    pub async fn with_wire_loss(
        settings: &PeerSettings,
        loss: WireLoss,
    ) -> Result<Self, PeerError> {
        Self::build(settings, PeerProfile::SimulatedPhone, None, Some(loss)).await
    }

    async fn build(
        settings: &PeerSettings,
        profile: PeerProfile,
        port: Option<PortLease>,
        wire_loss: Option<WireLoss>,
    ) -> Result<Self, PeerError> {
        let port_number = port.as_ref().map_or(0, PortLease::port);
        let bind_ip = if settings.loopback {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };

        let mut media_engine = MediaEngine::default();
        media_engine.register_codec(opus_codec(profile), RtpCodecKind::Audio)?;
        media_engine.register_codec(telephone_event_codec(), RtpCodecKind::Audio)?;
        let mut registry = configure_rtcp_reports(Registry::new()).with(
            Slot::from(REPORT_FORWARDER_SLOT),
            PacketFilter::report_forwarder(),
        );
        if let Some(loss) = wire_loss {
            registry = registry.with(Slot::from(WIRE_LOSS_SLOT), PacketFilter::wire_dropper(loss));
        }

        let mut setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED_AFTER),
                Some(ICE_FAILED_AFTER),
                Some(ICE_KEEPALIVE),
            );
        if settings.loopback {
            setting_engine = setting_engine.with_include_loopback_candidate(true);
        }
        if profile == PeerProfile::SimulatedPhone {
            // Meta's side is ICE-lite (§8.1): it never starts checks, so the bridge, as the full
            // agent, is controlling and paces the checks, as it will be in production.
            setting_engine = setting_engine.with_lite(true);
        }
        if let Some(ip) = settings.public_ip {
            setting_engine =
                setting_engine.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
        }
        let ice_servers = if settings.stun_urls.is_empty() || settings.loopback {
            vec![]
        } else {
            vec![RTCIceServer {
                urls: settings.stun_urls.clone(),
                ..Default::default()
            }]
        };

        let mut configuration = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
        // A simulated phone makes its own certificate per call, as a phone does.
        if profile == PeerProfile::Bridge
            && let Some(certificate) = bridge_certificate()
        {
            configuration = configuration.with_certificates(vec![certificate]);
        }
        let (tx, events) = mpsc::channel(PEER_EVENT_CAPACITY);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration.build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting_engine.build())
            .with_handler(Arc::new(EventForwarder { tx }))
            .with_udp_addrs(vec![SocketAddr::new(bind_ip, port_number)])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc = rand::random::<u32>() | 1;
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "bridge".to_owned(),
            "bridge-audio".to_owned(),
            "bridge-audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                active: true,
                codec: opus_codec(profile).rtp_codec,
                ..Default::default()
            }],
        )));
        if let Err(err) = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await {
            let _ = pc.close().await;
            return Err(err.into());
        }
        // The track's transceiver would take its one encoding's codec (Opus) as its only one,
        // and neither offer nor answer would carry telephone-event: keys would never be sent
        // (§8.5: answer with PT 126 so DTMF is negotiated; §8.6: offer it).
        let codecs = vec![opus_codec(profile), telephone_event_codec()];
        for transceiver in pc.get_transceivers().await {
            if let Err(err) = transceiver.set_codec_preferences(codecs.clone()).await {
                let _ = pc.close().await;
                return Err(err.into());
            }
        }

        Ok(Self {
            pc,
            track,
            ssrc,
            events,
            pending: Default::default(),
            gathering_complete: false,
            remote: None,
            reports: Default::default(),
            feedback_open: true,
            _port: port,
        })
    }

    /// The SSRC of everything this peer sends (one for the whole call, §8.2 rule 4).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Applies the caller's offer and returns our complete answer (all candidates gathered).
    pub async fn answer(&mut self, offer_sdp: &str) -> Result<String, PeerError> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned())?)
            .await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        self.local_sdp_after_gathering().await
    }

    /// Makes our offer for a call we place; returns it with all candidates gathered.
    pub async fn offer(&mut self) -> Result<String, PeerError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        self.local_sdp_after_gathering().await
    }

    /// Applies the callee's answer to our offer.
    pub async fn apply_answer(&self, answer_sdp: &str) -> Result<(), PeerError> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer_sdp.to_owned())?)
            .await?;
        Ok(())
    }

    /// Meta takes no trickled candidates: wait until gathering is complete (bounded), keeping
    /// any other event for the call task.
    async fn local_sdp_after_gathering(&mut self) -> Result<String, PeerError> {
        let deadline = tokio::time::Instant::now() + GATHERING_TIMEOUT;
        let mut held = Vec::new();
        while !self.gathering_complete {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(DriverEvent::GatheringComplete)) => self.gathering_complete = true,
                Ok(Some(other)) => held.push(other),
                Ok(None) | Err(_) => break,
            }
        }
        // Keep what arrived meanwhile (a state change or the track) for the call task.
        self.pending.extend(held);
        self.pc
            .local_description()
            .await
            .map(|description| description.sdp)
            .ok_or(PeerError::NoLocalDescription)
    }

    /// The next event of this connection: a state that matters or a received RTP packet
    /// (cancellation-safe). `None` once the connection's driver is gone.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        loop {
            if let Some(report) = self.reports.pop_front() {
                return Some(PeerEvent::LossReport(report));
            }
            let event = match self.pending.pop_front() {
                Some(event) => event,
                None => tokio::select! {
                    event = self.events.recv() => event?,
                    event = next_track_event(&self.remote) => match event {
                        Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                            return Some(PeerEvent::Rtp(RtpPacket {
                                ssrc: packet.header.ssrc,
                                payload_type: packet.header.payload_type,
                                sequence_number: packet.header.sequence_number,
                                timestamp: packet.header.timestamp,
                                payload: packet.payload,
                            }));
                        }
                        // Reports routed by the far end's own SSRC (a block about its stream
                        // first); any block about ours is still ours.
                        Some(TrackRemoteEvent::OnRtcpPacket(packets)) => {
                            self.queue_reports(&packets);
                            continue;
                        }
                        Some(TrackRemoteEvent::OnEnded) | None => {
                            tracing::debug!("the far end's track ended");
                            self.remote = None;
                            continue;
                        }
                        Some(_) => continue,
                    },
                    event = self.track.poll(), if self.feedback_open => match event {
                        Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                            self.queue_reports(&packets);
                            continue;
                        }
                        Some(_) => continue,
                        None => {
                            self.feedback_open = false;
                            continue;
                        }
                    },
                },
            };
            match event {
                DriverEvent::Track(track) => {
                    tracing::debug!("the far end's track arrived");
                    self.remote = Some(track);
                }
                DriverEvent::GatheringComplete => {}
                DriverEvent::State(state) => {
                    tracing::debug!(?state, "peer connection state");
                    match state {
                        RTCPeerConnectionState::Connected => return Some(PeerEvent::Connected),
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            return Some(PeerEvent::Gone);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn queue_reports(&mut self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        for packet in packets {
            self.reports
                .extend(report_blocks(packet.as_ref()).iter().map(LossReport::from));
        }
    }

    /// Sends an RTCP receiver report with one block, as the far end's receiver would (the
    /// simulated phone states loss with it).
    pub async fn write_loss_report(&self, report: &LossReport) -> Result<(), PeerError> {
        let receiver_report = ReceiverReport {
            ssrc: self.ssrc,
            reports: vec![ReceptionReport::from(report)],
            profile_extensions: bytes::Bytes::new(),
        };
        self.track
            .write_rtcp(vec![Box::new(receiver_report)])
            .await?;
        Ok(())
    }

    /// Sends one Opus frame on the outgoing track.
    pub async fn write_opus(
        &self,
        sequence_number: u16,
        timestamp: u32,
        payload: bytes::Bytes,
    ) -> Result<(), PeerError> {
        self.write_rtp(
            OPUS_PAYLOAD_TYPE,
            false,
            sequence_number,
            timestamp,
            payload,
        )
        .await
    }

    /// Sends one RFC 4733 telephone-event packet (a keypress) on the outgoing track, in the
    /// audio's sequence and timestamp space; `marker` on the first packet of an event.
    pub async fn write_telephone_event(
        &self,
        sequence_number: u16,
        timestamp: u32,
        marker: bool,
        payload: bytes::Bytes,
    ) -> Result<(), PeerError> {
        self.write_rtp(
            TELEPHONE_EVENT_PAYLOAD_TYPE,
            marker,
            sequence_number,
            timestamp,
            payload,
        )
        .await
    }

    async fn write_rtp(
        &self,
        payload_type: u8,
        marker: bool,
        sequence_number: u16,
        timestamp: u32,
        payload: bytes::Bytes,
    ) -> Result<(), PeerError> {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                payload_type,
                marker,
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.track.write_rtp(packet).await?;
        Ok(())
    }

    /// Closes the connection (a handle drop is not a close).
    pub async fn close(&self) {
        if let Err(err) = self.pc.close().await {
            tracing::debug!(%err, "closing peer connection");
        }
    }
}

/// The next event of an optional remote track; pending forever without one (for a `select!`
/// branch that waits for the track to arrive). `None` once the track has ended.
async fn next_track_event(track: &Option<Arc<dyn TrackRemote>>) -> Option<TrackRemoteEvent> {
    match track {
        Some(track) => track.poll().await,
        None => std::future::pending().await,
    }
}

/// RFC 4733 events (keypresses) at 8 kHz on PT 126, as Meta offers them (§8.2).
fn telephone_event_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: TELEPHONE_EVENT_PAYLOAD_TYPE,
    }
}

fn opus_codec(profile: PeerProfile) -> RTCRtpCodecParameters {
    let fmtp = match profile {
        PeerProfile::Bridge => BRIDGE_OPUS_FMTP,
        PeerProfile::SimulatedPhone => {
            "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
        }
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PAYLOAD_TYPE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_connected(peer: &mut MediaPeer) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), peer.next_event()).await {
                Ok(Some(PeerEvent::Connected)) => return,
                Ok(Some(_)) => {}
                other => panic!("not connected: {}", other.is_ok()),
            }
        }
    }

    fn fingerprint(sdp: &str) -> String {
        sdp.lines()
            .find(|line| line.starts_with("a=fingerprint:"))
            .expect("a fingerprint")
            .to_owned()
    }

    #[tokio::test]
    async fn keypresses_are_negotiated_in_the_answer_to_meta_and_in_our_offer() {
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let mut bridge = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let answer = bridge
            .answer(&testkit::fixtures::meta_offer())
            .await
            .expect("answer");
        bridge.close().await;
        let mut outbound = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let offer = outbound.offer().await.expect("offer");
        outbound.close().await;
        for sdp in [answer, offer] {
            assert!(sdp.contains(" UDP/TLS/RTP/SAVPF 111 126\r\n"), "{sdp}");
            assert!(
                sdp.contains("a=rtpmap:126 telephone-event/8000\r\n"),
                "{sdp}"
            );
        }
    }

    #[tokio::test]
    async fn the_bridge_reuses_one_certificate_while_each_phone_makes_its_own() {
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let mut fingerprints = Vec::new();
        for profile in [
            PeerProfile::Bridge,
            PeerProfile::Bridge,
            PeerProfile::SimulatedPhone,
            PeerProfile::SimulatedPhone,
        ] {
            let mut peer = MediaPeer::new(&settings, profile, None)
                .await
                .expect("peer");
            fingerprints.push(fingerprint(&peer.offer().await.expect("offer")));
            peer.close().await;
        }
        assert_eq!(fingerprints[0], fingerprints[1]);
        assert_ne!(fingerprints[0], fingerprints[2]);
        assert_ne!(fingerprints[2], fingerprints[3]);
    }

    /// A phone and a bridge peer, connected on loopback.
    async fn connected_pair() -> (MediaPeer, MediaPeer) {
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let mut phone = MediaPeer::new(&settings, PeerProfile::SimulatedPhone, None)
            .await
            .expect("phone peer");
        let mut bridge = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let offer = phone.offer().await.expect("offer");
        let answer = bridge.answer(&offer).await.expect("answer");
        phone.apply_answer(&answer).await.expect("apply answer");
        tokio::join!(wait_connected(&mut phone), wait_connected(&mut bridge));
        (phone, bridge)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reception_reports_about_what_each_side_sends_reach_it_while_rtcp_keeps_flowing() {
        let (mut phone, mut bridge) = connected_pair().await;
        let (phone_ssrc, bridge_ssrc) = (phone.ssrc(), bridge.ssrc());
        let crafted = LossReport {
            ssrc: bridge_ssrc,
            fraction_lost: 26,
            cumulative_lost: 7,
            highest_sequence: 70_000,
            jitter: 48,
            last_sender_report: 0,
        };
        // The stack's own reports carry the middle of the NTP time of the last sender report
        // received: non-zero proves the other side's sender reports arrive and are read.
        let (mut bridge_heard_rr, mut phone_heard_rr, mut crafted_sent) = (false, false, false);
        let mut crafted_heard = false;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sequence = 0u16;
        while !(bridge_heard_rr && phone_heard_rr && crafted_heard) {
            assert!(
                Instant::now() < deadline,
                "bridge heard rr {bridge_heard_rr}, phone heard rr {phone_heard_rr}, crafted {crafted_heard}"
            );
            tokio::select! {
                _ = tick.tick() => {
                    let payload = bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]);
                    let timestamp = u32::from(sequence) * 960;
                    bridge.write_opus(sequence, timestamp, payload.clone()).await.expect("write");
                    phone.write_opus(sequence, timestamp, payload).await.expect("write");
                    sequence = sequence.wrapping_add(1);
                }
                Some(event) = bridge.next_event() => if let PeerEvent::LossReport(report) = event {
                    assert_eq!(report.ssrc, bridge_ssrc, "{report:?}");
                    if report == crafted {
                        crafted_heard = true;
                    } else {
                        assert_eq!(report.fraction_lost, 0, "loopback loses nothing");
                        bridge_heard_rr |= report.last_sender_report != 0;
                    }
                },
                Some(event) = phone.next_event() => if let PeerEvent::LossReport(report) = event {
                    assert_eq!(report.ssrc, phone_ssrc, "{report:?}");
                    phone_heard_rr |= report.last_sender_report != 0;
                },
            }
            if bridge_heard_rr && !crafted_sent {
                phone
                    .write_loss_report(&crafted)
                    .await
                    .expect("rtcp written");
                crafted_sent = true;
            }
        }
        phone.close().await;
        bridge.close().await;
    }

    /// A decision that loses every `n`th packet it is asked about, counting them in `lost`.
    fn every_nth(n: u32, lost: Arc<std::sync::atomic::AtomicU32>) -> DropDecision {
        let mut asked = 0u32;
        Box::new(move || {
            asked += 1;
            let drop = asked.is_multiple_of(n);
            if drop {
                lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop
        })
    }

    /// Sequence numbers missing between the first and the last of `received`, and that span.
    fn gaps(received: &[u16]) -> (usize, usize) {
        let span = usize::from(received[received.len() - 1].wrapping_sub(received[0])) + 1;
        (span - received.len(), span)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_phone_losing_packets_on_the_wire_reports_the_loss_and_the_bridge_sees_the_gaps() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let (lost_in, lost_out) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let loss = WireLoss {
            inbound: every_nth(5, lost_in.clone()),
            outbound: every_nth(4, lost_out.clone()),
        };
        let mut phone = MediaPeer::with_wire_loss(&settings, loss)
            .await
            .expect("phone peer");
        let mut bridge = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let offer = phone.offer().await.expect("offer");
        let answer = bridge.answer(&offer).await.expect("answer");
        phone.apply_answer(&answer).await.expect("apply answer");
        tokio::join!(wait_connected(&mut phone), wait_connected(&mut bridge));

        let bridge_ssrc = bridge.ssrc();
        let (mut at_phone, mut at_bridge) = (Vec::new(), Vec::new());
        let mut lossy_report = None;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sequence = 0u16;
        while lossy_report.is_none() || at_phone.len() < 60 || at_bridge.len() < 60 {
            assert!(
                Instant::now() < deadline,
                "phone got {}, bridge got {}, lossy report {lossy_report:?}",
                at_phone.len(),
                at_bridge.len()
            );
            tokio::select! {
                _ = tick.tick() => {
                    let payload = bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]);
                    let timestamp = u32::from(sequence) * 960;
                    bridge.write_opus(sequence, timestamp, payload.clone()).await.expect("write");
                    phone.write_opus(sequence, timestamp, payload).await.expect("write");
                    sequence = sequence.wrapping_add(1);
                }
                Some(event) = phone.next_event() => if let PeerEvent::Rtp(packet) = event {
                    at_phone.push(packet.sequence_number);
                },
                Some(event) = bridge.next_event() => match event {
                    PeerEvent::Rtp(packet) => at_bridge.push(packet.sequence_number),
                    // The phone's own receiver reports, about the bridge's stream.
                    PeerEvent::LossReport(report) if report.fraction_lost > 0 => {
                        assert_eq!(report.ssrc, bridge_ssrc);
                        lossy_report = Some(report);
                    }
                    _ => {}
                },
            }
        }
        // Every 5th packet in is lost, every 4th out: the receivers see those gaps.
        let (missing, span) = gaps(&at_phone);
        assert!(
            missing.abs_diff(span / 5) <= 1,
            "{missing} of {span} missing at the phone"
        );
        let (missing, span) = gaps(&at_bridge);
        assert!(
            missing.abs_diff(span / 4) <= 1,
            "{missing} of {span} missing at the bridge"
        );
        assert!(lost_in.load(Ordering::Relaxed) > 0 && lost_out.load(Ordering::Relaxed) > 0);
        // The phone's stack counted its inbound drops as loss: 20 % is 51 in 256ths.
        let report = lossy_report.expect("a lossy report");
        assert!(
            (40..=64).contains(&report.fraction_lost) && report.cumulative_lost > 0,
            "{report:?}"
        );
        phone.close().await;
        bridge.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_phone_and_the_bridge_connect_on_loopback_and_exchange_rtp() {
        let settings = PeerSettings {
            loopback: true,
            ..Default::default()
        };
        let mut phone = MediaPeer::new(&settings, PeerProfile::SimulatedPhone, None)
            .await
            .expect("phone peer");
        let mut bridge = MediaPeer::new(&settings, PeerProfile::Bridge, None)
            .await
            .expect("bridge peer");
        let offer = phone.offer().await.expect("offer");
        assert!(offer.contains("a=setup:actpass"), "{offer}");
        // Like Meta's side: ICE-lite, so the bridge has to run the checks.
        assert!(offer.contains("a=ice-lite"), "{offer}");
        let answer = bridge.answer(&offer).await.expect("answer");
        assert!(answer.contains("a=setup:active"), "{answer}");
        assert!(answer.contains("a=candidate:"), "{answer}");
        phone.apply_answer(&answer).await.expect("apply answer");

        tokio::join!(wait_connected(&mut phone), wait_connected(&mut bridge));
        // The bridge sends; the phone's track appears with the first packets.
        let sender = async {
            for i in 0..50u16 {
                bridge
                    .write_opus(
                        i,
                        u32::from(i) * 960,
                        bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
                    )
                    .await
                    .expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let receiver = async {
            let mut packets = 0;
            while packets < 10 {
                match tokio::time::timeout(Duration::from_secs(5), phone.next_event()).await {
                    Ok(Some(PeerEvent::Rtp(packet))) => {
                        assert_eq!(packet.payload_type, OPUS_PAYLOAD_TYPE);
                        assert_eq!(packet.payload.as_ref(), &[0xf8, 0xff, 0xfe]);
                        packets += 1;
                    }
                    Ok(Some(_)) => {}
                    _ => panic!("no rtp at the phone"),
                }
            }
        };
        tokio::join!(sender, receiver);
        phone.close().await;
        bridge.close().await;
    }
}
