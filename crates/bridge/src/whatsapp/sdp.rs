//! SDP facts and the rules Meta applies to our SDP (spec §8.2, §8.6, §12.2): inspect, normalise,
//! validate.
//!
//! This is deliberately not a full SDP parser: it reads lines, splits them into the session part
//! and media sections, and looks at the handful of attributes the WhatsApp rules are about. Input
//! is untrusted (it comes in webhooks), so nothing here indexes blindly or panics.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::media::peer::BRIDGE_OPUS_FMTP;

/// Facts about one SDP (offer or answer) that the call flow needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    /// `a=ice-lite` present: the peer never starts ICE checks, so we must be controlling.
    pub ice_lite: bool,
    /// The audio section's `a=mid`, which our answer must echo.
    pub mid: String,
    pub opus_payload_type: u8,
    /// `useinbandfec=1` in the Opus fmtp: the peer's packets carry FEC for the previous frame.
    pub opus_fec: bool,
    /// `maxaveragebitrate` in the Opus fmtp (bit/s): the most the peer wants to receive.
    /// `None` when absent or outside what RFC 7587 allows.
    pub opus_max_average_bitrate: Option<u32>,
    /// Payload type of `telephone-event/8000` (RFC 4733 DTMF), if offered at 8 kHz.
    pub telephone_event_payload_type: Option<u8>,
    /// Number of `a=candidate` lines.
    pub candidates: usize,
    /// `a=setup` value (`actpass`, `active`, `passive`), media level first, then session level.
    pub setup: Option<String>,
    /// Hash names of every `a=fingerprint` line, lower-cased (`sha-256`, …).
    pub fingerprints: Vec<String>,
}

/// Why an SDP cannot carry a WhatsApp call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP has no m= line")]
    NoMediaSection,
    #[error("the SDP has {0} m= lines; WhatsApp calls have exactly one")]
    MultipleMediaSections(usize),
    #[error("the m= line is {0:?}, not audio")]
    NotAudio(String),
    #[error("malformed m= line {0:?}")]
    MalformedMediaLine(String),
    #[error("the audio section offers no opus codec")]
    NoOpus,
    #[error("the audio section has no a=mid")]
    MissingMid,
    #[error("the SDP has no a=ice-ufrag and a=ice-pwd")]
    MissingIceCredentials,
    #[error("the SDP has no a=fingerprint with a hash and a digest")]
    MissingFingerprint,
    #[error("the audio section has port 0 (rejected)")]
    AudioRejected,
    #[error("the audio section is a={0}, not sendrecv")]
    NotSendrecv(String),
}

/// Payload types Meta accepts in our answer: Opus and 8 kHz telephone-event.
const OPUS_PT: u8 = 111;
const TELEPHONE_EVENT_PT: u8 = 126;
/// Static G.711 payload types (PCMU, PCMA): allowed only when Meta offered them.
const G711_PTS: [u8; 2] = [0, 8];
/// The `maxaveragebitrate` values RFC 7587 §7 allows.
const OPUS_BITRATES: std::ops::RangeInclusive<u32> = 6_000..=510_000;
/// Only 20 ms packets (spec §8.2 rule 3).
const PTIME_MS: &str = "20";
/// The only fingerprint hash Meta accepts, written the way it expects.
const SHA_256: &str = "sha-256";
/// RFC 8839 minimum lengths of the ICE credentials.
const MIN_UFRAG_CHARS: usize = 4;
const MIN_PWD_CHARS: usize = 22;

/// An SDP split into its session part and its media sections (each starting with its m= line).
/// Line endings are removed; empty lines are dropped.
struct Sdp<'a> {
    session: Vec<&'a str>,
    media: Vec<Vec<&'a str>>,
}

impl<'a> Sdp<'a> {
    fn split(sdp: &'a str) -> Self {
        let mut parsed = Sdp {
            session: Vec::new(),
            media: Vec::new(),
        };
        for line in sdp.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if line.starts_with("m=") {
                parsed.media.push(vec![line]);
            } else if let Some(section) = parsed.media.last_mut() {
                section.push(line);
            } else {
                parsed.session.push(line);
            }
        }
        parsed
    }

    fn all_lines(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.session
            .iter()
            .chain(self.media.iter().flatten())
            .copied()
    }

    /// The only media section, which must be audio.
    fn audio(&self) -> Result<Media<'_>, SdpError> {
        let section = match self.media.as_slice() {
            [] => return Err(SdpError::NoMediaSection),
            [section] => section,
            more => return Err(SdpError::MultipleMediaSections(more.len())),
        };
        let media = Media::parse(section)?;
        if media.kind != "audio" {
            return Err(SdpError::NotAudio(media.kind.to_owned()));
        }
        Ok(media)
    }
}

/// A media section with its m= line taken apart.
struct Media<'a> {
    m_line: &'a str,
    kind: &'a str,
    /// `<port> <proto>`, kept verbatim for rebuilding the m= line.
    port_and_proto: String,
    payload_types: Vec<u8>,
    lines: &'a [&'a str],
}

impl<'a> Media<'a> {
    fn parse(section: &'a [&'a str]) -> Result<Self, SdpError> {
        let (m_line, lines) = section.split_first().ok_or(SdpError::NoMediaSection)?;
        let malformed = || SdpError::MalformedMediaLine(truncate(m_line));
        let mut fields = m_line.strip_prefix("m=").unwrap_or(m_line).split(' ');
        let kind = fields
            .next()
            .filter(|k| !k.is_empty())
            .ok_or_else(malformed)?;
        let port = fields
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(malformed)?;
        let proto = fields
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(malformed)?;
        let payload_types = fields
            .filter(|f| !f.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| malformed())?;
        Ok(Media {
            m_line,
            kind,
            port_and_proto: format!("{port} {proto}"),
            payload_types,
            lines,
        })
    }

    fn attr(&self, name: &str) -> Option<&'a str> {
        self.lines.iter().find_map(|line| attr(line, name))
    }

    /// `(payload type, encoding name, clock rate)` of every parsable `a=rtpmap` line.
    fn rtpmaps(&self) -> impl Iterator<Item = (u8, &'a str, u32)> + '_ {
        self.lines.iter().filter_map(|line| rtpmap(line))
    }

    /// The codec name of a payload type: its rtpmap, or the static assignment (RFC 3551).
    fn codec(&self, pt: u8) -> Option<(&'a str, u32)> {
        self.rtpmaps()
            .find(|(p, _, _)| *p == pt)
            .map(|(_, name, clock)| (name, clock))
            .or(match pt {
                0 => Some(("PCMU", 8000)),
                8 => Some(("PCMA", 8000)),
                9 => Some(("G722", 8000)),
                13 => Some(("CN", 8000)),
                _ => None,
            })
    }

    fn offered(&self, pt: u8) -> bool {
        self.payload_types.contains(&pt)
    }
}

/// The value of `a=<name>:<value>`, or `""` for a flag `a=<name>`.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("a=")?.strip_prefix(name)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix(':')
    }
}

fn rtpmap(line: &str) -> Option<(u8, &str, u32)> {
    let (pt, encoding) = attr(line, "rtpmap")?.split_once(' ')?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next()?;
    let clock = parts.next()?.parse().ok()?;
    Some((pt.parse().ok()?, name, clock))
}

/// The payload type an `a=rtpmap`, `a=fmtp` or `a=rtcp-fb` line is about (`None` for `*`).
fn codec_line_pt(line: &str) -> Option<Option<u8>> {
    let value = ["rtpmap", "fmtp", "rtcp-fb"]
        .iter()
        .find_map(|name| attr(line, name))?;
    let pt = value.split(' ').next().unwrap_or("");
    Some(pt.parse().ok())
}

fn fingerprint_hash(line: &str) -> Option<&str> {
    attr(line, "fingerprint")?.split(' ').next()
}

fn is_telephone_event_8k(name: &str, clock: u32) -> bool {
    name.eq_ignore_ascii_case("telephone-event") && clock == 8000
}

fn truncate(text: &str) -> String {
    const MAX_CHARS: usize = 80;
    text.chars().take(MAX_CHARS).collect()
}

/// Reads the facts the call flow needs from an offer or an answer.
///
/// A call carries audio both ways: a rejected audio section (port 0) or one that is not
/// `sendrecv` (`inactive`, `sendonly`, `recvonly`) is unusable. No direction at all means
/// `sendrecv` (RFC 8866 §6.7).
pub fn inspect(sdp: &str) -> Result<OfferInfo, SdpError> {
    let parsed = Sdp::split(sdp);
    let audio = parsed.audio()?;
    if audio.port_and_proto.split(' ').next() == Some("0") {
        return Err(SdpError::AudioRejected);
    }
    let direction = |line: &str| DIRECTIONS.into_iter().find(|d| attr(line, d) == Some(""));
    let declared = audio
        .lines
        .iter()
        .find_map(|line| direction(line))
        .or_else(|| parsed.session.iter().find_map(|line| direction(line)));
    if let Some(declared) = declared
        && declared != "sendrecv"
    {
        return Err(SdpError::NotSendrecv(declared.to_owned()));
    }
    let mid = audio
        .attr("mid")
        .filter(|mid| !mid.is_empty())
        .ok_or(SdpError::MissingMid)?;
    let opus_payload_type = audio
        .rtpmaps()
        .find(|(pt, name, _)| name.eq_ignore_ascii_case("opus") && audio.offered(*pt))
        .map(|(pt, _, _)| pt)
        .ok_or(SdpError::NoOpus)?;
    // The Opus fmtp's parameters, `name=value` (RFC 7587 §7).
    let opus_params: Vec<&str> = audio
        .lines
        .iter()
        .filter_map(|line| attr(line, "fmtp")?.split_once(' '))
        .filter(|(pt, _)| pt.parse() == Ok(opus_payload_type))
        .flat_map(|(_, params)| params.split(';').map(str::trim))
        .collect();
    let opus_fec = opus_params
        .iter()
        .any(|param| param.eq_ignore_ascii_case("useinbandfec=1"));
    let opus_max_average_bitrate = opus_params
        .iter()
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("maxaveragebitrate"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .filter(|bitrate| OPUS_BITRATES.contains(bitrate));
    let telephone_event_payload_type = audio
        .rtpmaps()
        .find(|(pt, name, clock)| is_telephone_event_8k(name, *clock) && audio.offered(*pt))
        .map(|(pt, _, _)| pt);
    // Without them no ICE check or DTLS handshake can succeed: refused here, before the call
    // opens an AI session or answers.
    let has_value = |name| {
        parsed
            .all_lines()
            .any(|line| attr(line, name).is_some_and(|value| !value.trim().is_empty()))
    };
    if !has_value("ice-ufrag") || !has_value("ice-pwd") {
        return Err(SdpError::MissingIceCredentials);
    }
    let fingerprinted = parsed.all_lines().any(|line| {
        attr(line, "fingerprint")
            .and_then(|value| value.trim().split_once(' '))
            .is_some_and(|(hash, digest)| !hash.is_empty() && !digest.trim().is_empty())
    });
    if !fingerprinted {
        return Err(SdpError::MissingFingerprint);
    }
    let setup = audio
        .attr("setup")
        .or_else(|| parsed.session.iter().find_map(|line| attr(line, "setup")))
        .map(str::to_owned);
    Ok(OfferInfo {
        ice_lite: parsed.all_lines().any(|line| line == "a=ice-lite"),
        mid: mid.to_owned(),
        opus_payload_type,
        opus_fec,
        opus_max_average_bitrate,
        telephone_event_payload_type,
        candidates: parsed
            .all_lines()
            .filter(|line| attr(line, "candidate").is_some())
            .count(),
        setup,
        fingerprints: parsed
            .all_lines()
            .filter_map(fingerprint_hash)
            .map(str::to_ascii_lowercase)
            .collect(),
    })
}

/// Direction attributes (RFC 8866 §6.7); without any, a media section is `sendrecv`.
const DIRECTIONS: [&str; 4] = ["sendrecv", "sendonly", "recvonly", "inactive"];

/// The caller's offer as the WebRTC stack is given it, and what was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedOffer {
    pub sdp: String,
    /// `a=candidate` lines dropped as unusable (see [`usable_candidate`]).
    pub dropped_candidates: usize,
    /// The offer had no direction attribute, so `a=sendrecv` was added to its audio section.
    pub direction_added: bool,
}

/// Makes an offer's defaults explicit and drops what the stack cannot use, so that its answer
/// is an answer to what the caller meant:
/// - no direction attribute at all (nor one the stack knows, such as a misspelt `a=sndrecv`,
///   which SDP parsers ignore): RFC 8866 §6.7 (and RFC 3264 §5.1) make the default `sendrecv`,
///   which the stack does not apply (it leaves the section out of its answer), so `a=sendrecv`
///   is added to the audio section;
/// - `a=candidate` lines the bridge cannot use (port 0, a transport other than UDP, unparsable)
///   are dropped rather than left to fail in the ICE agent;
/// - the Opus parameters the stack would compare with its own state the bridge's values (see
///   [`opus_fmtp_for_stack`]).
///
/// Line endings become CRLF.
pub fn prepare_offer(offer: &str) -> PreparedOffer {
    let parsed = Sdp::split(offer);
    let direction_added = !parsed
        .all_lines()
        .any(|line| DIRECTIONS.iter().any(|d| attr(line, d) == Some("")));
    let mut dropped_candidates = 0;
    let mut out: Vec<&str> = Vec::new();
    let mut usable = |line: &str| {
        if attr(line, "candidate").is_some_and(|value| !usable_candidate(value)) {
            dropped_candidates += 1;
            return false;
        }
        true
    };
    out.extend(parsed.session.iter().copied().filter(|line| usable(line)));
    let mut added = false;
    for section in &parsed.media {
        out.extend(section.iter().copied().filter(|line| usable(line)));
        if direction_added && !added && section.first().is_some_and(|m| m.starts_with("m=audio ")) {
            out.push("a=sendrecv");
            added = true;
        }
    }
    let mut sdp = out.join("\r\n");
    sdp.push_str("\r\n");
    PreparedOffer {
        sdp: opus_fmtp_for_stack(&sdp),
        dropped_candidates,
        direction_added,
    }
}

/// `sdp` (CRLF) with every Opus `a=fmtp` line stating the bridge's own values of the
/// parameters it declares ([`BRIDGE_OPUS_FMTP`]: `minptime=20;useinbandfec=1`), the caller's
/// other parameters kept. The WebRTC stack finds no common Opus where a value differs, so
/// the answer had none: Meta's older offers and browsers say `minptime=10`, which is no reason
/// to refuse a call. The stack's answer repeats the offer's line, so it now says what the
/// bridge wants to receive: 20 ms packets, with FEC. What the caller itself said is read from
/// the original SDP ([`inspect`]). For an offer before the stack answers it, and for Meta's
/// answer to ours before the stack applies it.
pub fn opus_fmtp_for_stack(sdp: &str) -> String {
    let opus: Vec<u8> = sdp
        .lines()
        .filter_map(|line| rtpmap(line.trim_end()))
        .filter(|(_, name, _)| name.eq_ignore_ascii_case("opus"))
        .map(|(pt, _, _)| pt)
        .collect();
    let ours: Vec<&str> = BRIDGE_OPUS_FMTP.split(';').collect();
    let key = |parameter: &str| parameter.split('=').next().unwrap_or("").trim().to_owned();
    let mut out = String::with_capacity(sdp.len() + ours.len() * 16);
    for line in sdp.lines().map(str::trim_end) {
        let opus_parameters = attr(line, "fmtp")
            .and_then(|value| value.split_once(' '))
            .filter(|(pt, _)| pt.parse().is_ok_and(|pt: u8| opus.contains(&pt)));
        let Some((pt, parameters)) = opus_parameters else {
            out.push_str(line);
            out.push_str("\r\n");
            continue;
        };
        let mut kept: Vec<&str> = parameters
            .split(';')
            .map(str::trim)
            .filter(|parameter| !parameter.is_empty())
            .filter(|parameter| {
                !ours
                    .iter()
                    .any(|own| key(own).eq_ignore_ascii_case(&key(parameter)))
            })
            .collect();
        kept.extend(&ours);
        out.push_str(&format!("a=fmtp:{pt} {}\r\n", kept.join(";")));
    }
    out
}

/// An `a=candidate` value the bridge can use: `<foundation> <component> udp <priority>
/// <address> <port> typ <type> …` with a non-zero port.
fn usable_candidate(value: &str) -> bool {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [
        _foundation,
        component,
        transport,
        priority,
        address,
        port,
        typ,
        _kind,
        ..,
    ] = fields.as_slice()
    else {
        return false;
    };
    component.parse::<u16>().is_ok()
        && transport.eq_ignore_ascii_case("udp")
        && priority.parse::<u32>().is_ok()
        && !address.is_empty()
        && port.parse::<u16>().is_ok_and(|port| port != 0)
        && *typ == "typ"
}

/// Our answer after the stack made it, brought in line with §8.2: CRLF endings and trailing CRLF;
/// keep only the sha-256 a=fingerprint line (hash name lower case); drop a=extmap (and
/// a=extmap-allow-mixed) and a=ice-lite;
/// ensure a=ptime:20 and a=maxptime:20 in the audio section; drop rtpmap/fmtp/rtcp-fb lines and m-line
/// payload types of any codec other than opus and telephone-event.
///
/// telephone-event is kept at 8 kHz only (the only DTMF clock WhatsApp uses). If no sha-256
/// fingerprint exists, or no opus/telephone-event payload type would remain, those parts are left
/// as they are for [`validate_answer`] to report: normalising cannot invent them.
pub fn normalize_answer(answer: &str) -> String {
    normalize(answer)
}

/// Same normalisation for an offer we make for a business-initiated call (§8.6; keeps a=setup:actpass).
pub fn normalize_offer(offer: &str) -> String {
    normalize(offer)
}

fn normalize(sdp: &str) -> String {
    let parsed = Sdp::split(sdp);
    let has_sha256 = parsed
        .all_lines()
        .filter_map(fingerprint_hash)
        .any(|hash| hash.eq_ignore_ascii_case(SHA_256));
    let mut fingerprint_kept = false;
    // Lines every section loses or rewrites the same way.
    let mut generic = |line: &str| -> Option<String> {
        // extmap-allow-mixed means nothing once the extmap lines are gone.
        if line == "a=ice-lite"
            || attr(line, "extmap").is_some()
            || attr(line, "extmap-allow-mixed").is_some()
        {
            return None;
        }
        if let Some(value) = attr(line, "fingerprint") {
            let (hash, digest) = value.split_once(' ').unwrap_or((value, ""));
            if !has_sha256 {
                return Some(line.to_owned());
            }
            if fingerprint_kept || !hash.eq_ignore_ascii_case(SHA_256) {
                return None;
            }
            fingerprint_kept = true;
            return Some(format!("a=fingerprint:{SHA_256} {digest}"));
        }
        Some(line.to_owned())
    };

    let mut out: Vec<String> = parsed.session.iter().filter_map(|l| generic(l)).collect();
    for section in &parsed.media {
        let media = match Media::parse(section) {
            Ok(media) if media.kind == "audio" => media,
            // Not ours to fix: keep other or unreadable sections apart from the generic rules.
            _ => {
                out.extend(section.iter().filter_map(|l| generic(l)));
                continue;
            }
        };
        let keep: Vec<u8> = media
            .payload_types
            .iter()
            .copied()
            .filter(|pt| {
                media.codec(*pt).is_some_and(|(name, clock)| {
                    name.eq_ignore_ascii_case("opus") || is_telephone_event_8k(name, clock)
                })
            })
            .collect();
        let filter_codecs = !keep.is_empty();
        if filter_codecs {
            let mut m_line = format!("m={} {}", media.kind, media.port_and_proto);
            for pt in &keep {
                let _ = write!(m_line, " {pt}");
            }
            out.push(m_line);
        } else {
            out.push(media.m_line.to_owned());
        }

        let mut body: Vec<String> = Vec::new();
        let mut last_codec_line = None;
        for line in media.lines {
            if attr(line, "ptime").is_some() || attr(line, "maxptime").is_some() {
                continue;
            }
            if let Some(pt) = codec_line_pt(line) {
                if filter_codecs && pt.is_some_and(|pt| !keep.contains(&pt)) {
                    continue;
                }
                if let Some(line) = generic(line) {
                    body.push(line);
                    last_codec_line = Some(body.len());
                }
                continue;
            }
            if let Some(line) = generic(line) {
                body.push(line);
            }
        }
        // Packetisation belongs with the codec lines; without any, at the end of the section.
        let at = last_codec_line.unwrap_or(body.len());
        body.insert(at, format!("a=maxptime:{PTIME_MS}"));
        body.insert(at, format!("a=ptime:{PTIME_MS}"));
        out.extend(body);
    }

    let mut text = out.join("\r\n");
    text.push_str("\r\n");
    text
}

/// The §12.2 validator: Ok(()) or every violated rule as a readable line.
/// no a=ice-lite; a=setup:active; exactly one a=fingerprint and it is sha-256; a=mid equals the
/// offer's mid; only PTs 111 and 126 (plus 0/8 if the offer had them); a=ptime:20; exactly one ssrc; ≥1 candidate; CRLF endings.
///
/// Also checks the ICE credential lengths of §8.2 rule 9 and that opus is answered.
pub fn validate_answer(offer: &str, answer: &str) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    check_crlf(answer, &mut problems);
    let parsed = Sdp::split(answer);
    check_common(&parsed, &mut problems);
    check_setup(&parsed, "active", &mut problems);

    let offer = Sdp::split(offer);
    let offer_audio = match offer.audio() {
        Ok(audio) => Some(audio),
        Err(e) => {
            problems.push(format!("the offer cannot be answered: {e}"));
            None
        }
    };
    let Ok(audio) = parsed.audio() else {
        // check_common has reported the media section problem.
        return result(problems);
    };

    let offer_mid = offer_audio.as_ref().and_then(|a| a.attr("mid"));
    match (audio.attr("mid"), offer_mid) {
        (None, _) => problems.push("a=mid is missing from the audio section".to_owned()),
        (Some(mid), Some(offer_mid)) if mid != offer_mid => {
            problems.push(format!("a=mid is {mid:?} but the offer's is {offer_mid:?}"))
        }
        _ => {}
    }

    let mut allowed = vec![OPUS_PT, TELEPHONE_EVENT_PT];
    if let Some(offer_audio) = &offer_audio {
        allowed.extend(G711_PTS.iter().filter(|pt| offer_audio.offered(**pt)));
    }
    let used: BTreeSet<u8> = audio
        .payload_types
        .iter()
        .copied()
        .chain(
            audio
                .lines
                .iter()
                .filter_map(|l| codec_line_pt(l).flatten()),
        )
        .collect();
    for pt in used.iter().filter(|pt| !allowed.contains(pt)) {
        let name = audio.codec(*pt).map_or("unknown codec", |(name, _)| name);
        problems.push(format!(
            "payload type {pt} ({name}) is not allowed: only {OPUS_PT} (opus) and \
             {TELEPHONE_EVENT_PT} (telephone-event), plus 0/8 when offered"
        ));
    }
    if !audio.offered(OPUS_PT)
        || !audio
            .codec(OPUS_PT)
            .is_some_and(|(name, clock)| name.eq_ignore_ascii_case("opus") && clock == 48_000)
    {
        problems.push(format!(
            "opus/48000/2 is not answered on payload type {OPUS_PT}"
        ));
    }
    if audio.offered(TELEPHONE_EVENT_PT)
        && !audio
            .codec(TELEPHONE_EVENT_PT)
            .is_some_and(|(name, clock)| is_telephone_event_8k(name, clock))
    {
        problems.push(format!(
            "payload type {TELEPHONE_EVENT_PT} must be telephone-event/8000"
        ));
    }
    check_ptime(&audio, &mut problems);
    result(problems)
}

/// §8.6 rules for a business-initiated offer (setup:actpass, one sha-256 fingerprint, opus, one m-line, ≥1 candidate, CRLF).
///
/// Also: no a=ice-lite, only opus and telephone-event/8000 codecs, a=ptime:20, one SSRC and the
/// ICE credential lengths, as for answers.
pub fn validate_offer(offer: &str) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    check_crlf(offer, &mut problems);
    let parsed = Sdp::split(offer);
    check_common(&parsed, &mut problems);
    check_setup(&parsed, "actpass", &mut problems);
    let Ok(audio) = parsed.audio() else {
        return result(problems);
    };
    if audio.attr("mid").is_none_or(str::is_empty) {
        problems.push("a=mid is missing from the audio section".to_owned());
    }
    let mut has_opus = false;
    for pt in &audio.payload_types {
        match audio.codec(*pt) {
            Some((name, _)) if name.eq_ignore_ascii_case("opus") => has_opus = true,
            Some((name, clock)) if is_telephone_event_8k(name, clock) => {}
            other => problems.push(format!(
                "payload type {pt} ({}) is not allowed: offer only opus and telephone-event/8000",
                other.map_or("unknown codec", |(name, _)| name)
            )),
        }
    }
    if !has_opus {
        problems.push("the offer has no opus codec".to_owned());
    }
    check_ptime(&audio, &mut problems);
    result(problems)
}

fn result(problems: Vec<String>) -> Result<(), Vec<String>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_crlf(sdp: &str, problems: &mut Vec<String>) {
    if sdp.is_empty() {
        problems.push("the SDP is empty".to_owned());
        return;
    }
    let bytes = sdp.as_bytes();
    let bare_lf = bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
    let bare_cr = bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
    if bare_lf || bare_cr {
        problems.push("line endings must be CRLF".to_owned());
    }
    if !sdp.ends_with("\r\n") {
        problems.push("the SDP must end with CRLF".to_owned());
    }
}

/// Rules shared by answers and offers.
fn check_common(parsed: &Sdp<'_>, problems: &mut Vec<String>) {
    if let Err(e) = parsed.audio() {
        problems.push(e.to_string());
    }
    if parsed.all_lines().any(|line| line == "a=ice-lite") {
        problems.push("a=ice-lite must not be present: we are a full ICE agent".to_owned());
    }
    let hashes: Vec<&str> = parsed.all_lines().filter_map(fingerprint_hash).collect();
    if hashes.len() != 1 {
        problems.push(format!(
            "exactly one a=fingerprint is required, found {}",
            hashes.len()
        ));
    }
    for hash in hashes.iter().filter(|hash| **hash != SHA_256) {
        problems.push(format!(
            "a=fingerprint hash {hash:?} is not accepted: only {SHA_256:?}"
        ));
    }
    let ssrcs: BTreeSet<&str> = parsed
        .all_lines()
        .filter_map(|line| attr(line, "ssrc"))
        .map(|value| value.split(' ').next().unwrap_or(value))
        .collect();
    if ssrcs.len() != 1 {
        problems.push(format!(
            "exactly one SSRC is required, found {}",
            ssrcs.len()
        ));
    }
    if !parsed
        .all_lines()
        .any(|line| attr(line, "candidate").is_some())
    {
        problems.push("at least one a=candidate is required (no trickle ICE)".to_owned());
    }
    for (name, min) in [("ice-ufrag", MIN_UFRAG_CHARS), ("ice-pwd", MIN_PWD_CHARS)] {
        match parsed.all_lines().find_map(|line| attr(line, name)) {
            None => problems.push(format!("a={name} is missing")),
            Some(value) if value.chars().count() < min => problems.push(format!(
                "a={name} must have at least {min} characters, has {}",
                value.chars().count()
            )),
            Some(_) => {}
        }
    }
}

fn check_setup(parsed: &Sdp<'_>, expected: &str, problems: &mut Vec<String>) {
    let setups: Vec<&str> = parsed
        .all_lines()
        .filter_map(|line| attr(line, "setup"))
        .collect();
    match setups.as_slice() {
        [] => problems.push(format!("a=setup:{expected} is missing")),
        found if found.iter().all(|s| *s == expected) => {}
        found => problems.push(format!(
            "a=setup must be {expected}, found {}",
            found.join(", ")
        )),
    }
}

fn check_ptime(audio: &Media<'_>, problems: &mut Vec<String>) {
    match audio.attr("ptime") {
        Some(PTIME_MS) => {}
        Some(other) => problems.push(format!("a=ptime must be {PTIME_MS}, found {other:?}")),
        None => problems.push(format!(
            "a=ptime:{PTIME_MS} is missing from the audio section"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::fixtures::{META_ANSWER as ANSWER, meta_offer as offer};

    const FINGERPRINT_256: &str = "a=fingerprint:sha-256 5B:5B:49:04:FD:28:1D:E8:49:B8:9D:8E:80:83:BB:C9:35:FC:BB:6E:BE:2F:28:B4:EE:A6:5B:48:92:6F:62:CA";

    /// What a WebRTC stack might produce before normalisation: LF endings, sha-384 and sha-256
    /// fingerprints (upper-case hash name), extmap, no ptime, an extra G722 codec with feedback.
    const MESSY_ANSWER: &str = "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0\na=group:BUNDLE audio\na=extmap-allow-mixed\na=fingerprint:sha-384 AA:BB:CC\na=fingerprint:SHA-256 5B:5B:49:04\nm=audio 40000 UDP/TLS/RTP/SAVPF 111 9 126\nc=IN IP4 198.51.100.20\na=candidate:1 1 udp 2130706431 198.51.100.20 40000 typ host\na=ice-ufrag:b7Xq9LmN\na=ice-pwd:9hT2mKx4VwZr8LpQ3sN6yD1c\na=setup:active\na=mid:audio\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\na=sendrecv\na=rtcp-mux\na=rtpmap:111 opus/48000/2\na=rtcp-fb:111 transport-cc\na=fmtp:111 minptime=10;useinbandfec=1\na=rtpmap:9 G722/8000\na=rtcp-fb:9 nack\na=rtpmap:126 telephone-event/8000\na=ssrc:2859301122 cname:agent\na=ssrc:2859301122 msid:agent agent-audio\n";

    fn problems(offer: &str, answer: &str) -> Vec<String> {
        validate_answer(offer, answer).expect_err("the answer should be refused")
    }

    fn assert_reported(problems: &[String], needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem mentions {needle:?}: {problems:#?}"
        );
    }

    #[test]
    fn the_spec_offer_reads_as_documented() {
        let info = inspect(&offer()).unwrap();
        assert_eq!(
            info,
            OfferInfo {
                ice_lite: true,
                mid: "audio".to_owned(),
                opus_payload_type: 111,
                opus_fec: true,
                opus_max_average_bitrate: Some(20_000),
                telephone_event_payload_type: Some(126),
                candidates: 2,
                setup: Some("actpass".to_owned()),
                fingerprints: vec!["sha-256".to_owned()],
            }
        );
    }

    #[test]
    fn the_spec_answer_validates_against_the_spec_offer() {
        assert_eq!(validate_answer(&offer(), ANSWER), Ok(()));
        let info = inspect(ANSWER).unwrap();
        assert!(!info.ice_lite);
        assert_eq!(info.setup.as_deref(), Some("active"));
    }

    #[test]
    fn bare_lf_endings_are_reported() {
        let answer = ANSWER.replace("\r\n", "\n");
        assert_reported(&problems(&offer(), &answer), "CRLF");
        let answer = ANSWER.trim_end();
        assert_eq!(problems(&offer(), answer), ["the SDP must end with CRLF"]);
    }

    #[test]
    fn ice_lite_in_the_answer_is_reported() {
        let answer = ANSWER.replace("t=0 0\r\n", "t=0 0\r\na=ice-lite\r\n");
        assert_reported(&problems(&offer(), &answer), "a=ice-lite");
    }

    #[test]
    fn setup_other_than_active_is_reported() {
        let answer = ANSWER.replace("a=setup:active", "a=setup:passive");
        assert_reported(&problems(&offer(), &answer), "a=setup must be active");
        let answer = ANSWER.replace("a=setup:active\r\n", "");
        assert_reported(&problems(&offer(), &answer), "a=setup:active is missing");
    }

    #[test]
    fn extra_or_wrong_fingerprints_are_reported() {
        let answer = ANSWER.replace(
            FINGERPRINT_256,
            &format!("{FINGERPRINT_256}\r\na=fingerprint:sha-384 AA:BB"),
        );
        let found = problems(&offer(), &answer);
        assert_reported(&found, "exactly one a=fingerprint is required, found 2");
        assert_reported(&found, "\"sha-384\" is not accepted");

        let answer = ANSWER.replace("fingerprint:sha-256", "fingerprint:SHA-256");
        assert_reported(&problems(&offer(), &answer), "\"SHA-256\" is not accepted");

        let answer = ANSWER.replace(&format!("{FINGERPRINT_256}\r\n"), "");
        assert_reported(&problems(&offer(), &answer), "found 0");
    }

    #[test]
    fn a_mid_that_differs_from_the_offer_is_reported() {
        let answer = ANSWER.replace("a=mid:audio", "a=mid:0");
        assert_reported(
            &problems(&offer(), &answer),
            "a=mid is \"0\" but the offer's is \"audio\"",
        );
    }

    #[test]
    fn other_codecs_are_reported() {
        let answer = ANSWER
            .replace("SAVPF 111 126", "SAVPF 111 9 126")
            .replace("a=ptime:20", "a=rtpmap:9 G722/8000\r\na=ptime:20");
        assert_reported(&problems(&offer(), &answer), "payload type 9 (G722)");
    }

    #[test]
    fn g711_is_allowed_only_when_offered() {
        let answer = ANSWER.replace("SAVPF 111 126", "SAVPF 111 126 8");
        assert_reported(&problems(&offer(), &answer), "payload type 8 (PCMA)");
        let g711_offer = offer().replace("SAVPF 111 126", "SAVPF 111 126 0 8");
        assert_eq!(validate_answer(&g711_offer, &answer), Ok(()));
    }

    #[test]
    fn missing_or_wrong_ptime_is_reported() {
        let answer = ANSWER.replace("a=ptime:20\r\n", "");
        assert_reported(&problems(&offer(), &answer), "a=ptime:20 is missing");
        let answer = ANSWER.replace("a=ptime:20", "a=ptime:40");
        assert_reported(&problems(&offer(), &answer), "a=ptime must be 20");
    }

    #[test]
    fn more_or_fewer_than_one_ssrc_is_reported() {
        let answer = ANSWER.replace(
            "a=ssrc:2859301122 cname:agent",
            "a=ssrc:2859301122 cname:agent\r\na=ssrc:42 cname:agent",
        );
        assert_reported(
            &problems(&offer(), &answer),
            "exactly one SSRC is required, found 2",
        );
        // Several attribute lines of the same SSRC are one SSRC.
        let answer = ANSWER.replace(
            "a=ssrc:2859301122 cname:agent",
            "a=ssrc:2859301122 cname:agent\r\na=ssrc:2859301122 msid:agent agent-audio",
        );
        assert_eq!(validate_answer(&offer(), &answer), Ok(()));
        let answer = ANSWER.replace("a=ssrc:2859301122 cname:agent\r\n", "");
        assert_reported(&problems(&offer(), &answer), "found 0");
    }

    #[test]
    fn an_answer_without_candidates_is_reported() {
        let answer = ANSWER.replace(
            "a=candidate:1 1 udp 2130706431 198.51.100.20 40000 typ host\r\n",
            "",
        );
        assert_reported(&problems(&offer(), &answer), "a=candidate");
    }

    #[test]
    fn short_ice_credentials_are_reported() {
        let answer = ANSWER.replace("a=ice-pwd:9hT2mKx4VwZr8LpQ3sN6yD1c", "a=ice-pwd:short");
        assert_reported(
            &problems(&offer(), &answer),
            "a=ice-pwd must have at least 22",
        );
    }

    #[test]
    fn a_second_media_section_is_reported() {
        let answer = format!("{ANSWER}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:video\r\n");
        assert_reported(&problems(&offer(), &answer), "2 m= lines");
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let answer = ANSWER
            .replace("a=setup:active", "a=setup:passive")
            .replace("a=mid:audio", "a=mid:0")
            .replace("a=ptime:20\r\n", "");
        assert_eq!(problems(&offer(), &answer).len(), 3);
    }

    #[test]
    fn a_messy_answer_validates_after_normalisation() {
        let messy = problems(&offer(), MESSY_ANSWER);
        assert!(messy.len() >= 4, "{messy:#?}");

        let normalized = normalize_answer(MESSY_ANSWER);
        assert_eq!(
            validate_answer(&offer(), &normalized),
            Ok(()),
            "{normalized}"
        );
        assert!(normalized.contains("m=audio 40000 UDP/TLS/RTP/SAVPF 111 126\r\n"));
        assert!(normalized.contains("\r\na=fingerprint:sha-256 5B:5B:49:04\r\n"));
        for gone in ["sha-384", "extmap", "G722", "a=rtcp-fb:9", "\n\n"] {
            assert!(!normalized.contains(gone), "{gone} in {normalized}");
        }
        assert!(normalized.contains("a=rtcp-fb:111 transport-cc\r\n"));
        assert!(normalized.contains(
            "a=rtpmap:126 telephone-event/8000\r\na=ptime:20\r\na=maxptime:20\r\na=ssrc:"
        ));
    }

    #[test]
    fn normalising_a_good_answer_changes_nothing() {
        assert_eq!(normalize_answer(ANSWER), ANSWER);
        let twice = normalize_answer(&normalize_answer(MESSY_ANSWER));
        assert_eq!(twice, normalize_answer(MESSY_ANSWER));
    }

    #[test]
    fn normalising_replaces_wrong_ptime_values() {
        let answer = ANSWER
            .replace("a=ptime:20", "a=ptime:60")
            .replace("a=maxptime:20", "a=maxptime:120");
        let normalized = normalize_answer(&answer);
        assert_eq!(normalized, ANSWER);
    }

    #[test]
    fn telephone_event_at_48k_is_dropped_by_normalisation() {
        let answer = ANSWER
            .replace("SAVPF 111 126", "SAVPF 111 110 126")
            .replace(
                "a=rtpmap:126 telephone-event/8000",
                "a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000",
            );
        assert_eq!(normalize_answer(&answer), ANSWER);
    }

    fn bic_offer() -> String {
        ANSWER
            .replace("a=setup:active", "a=setup:actpass")
            .replace("a=ptime:20\r\na=maxptime:20\r\n", "")
    }

    #[test]
    fn a_normalised_business_offer_validates() {
        let offer = format!(
            "{}a=fingerprint:sha-512 AA\r\n",
            bic_offer().replace("SAVPF 111 126", "SAVPF 111 9 126")
        );
        assert!(validate_offer(&offer).is_err());
        let normalized = normalize_offer(&offer);
        assert_eq!(validate_offer(&normalized), Ok(()), "{normalized}");
        assert_eq!(
            inspect(&normalized).unwrap().setup.as_deref(),
            Some("actpass")
        );
    }

    #[test]
    fn offer_rule_violations_are_reported() {
        let good = normalize_offer(&bic_offer());
        assert_eq!(validate_offer(&good), Ok(()));
        let cases = [
            (
                good.replace("a=setup:actpass", "a=setup:active"),
                "a=setup must be actpass",
            ),
            (
                good.replace("fingerprint:sha-256", "fingerprint:sha-1"),
                "\"sha-1\"",
            ),
            (
                good.replace("SAVPF 111 126", "SAVPF 126")
                    .replace("a=rtpmap:111 opus/48000/2\r\n", "")
                    .replace("a=fmtp:111 minptime=20;useinbandfec=1\r\n", ""),
                "no opus",
            ),
            (
                format!("{good}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
                "2 m= lines",
            ),
            (
                good.replace(
                    "a=candidate:1 1 udp 2130706431 198.51.100.20 40000 typ host\r\n",
                    "",
                ),
                "a=candidate",
            ),
            (good.replace("\r\n", "\n"), "CRLF"),
            (good.replace("t=0 0", "t=0 0\r\na=ice-lite"), "ice-lite"),
        ];
        for (offer, needle) in cases {
            let found = validate_offer(&offer).expect_err(needle);
            assert_reported(&found, needle);
        }
    }

    #[test]
    fn inspect_reports_unusable_sdp() {
        let offer = offer();
        let cases = [
            (String::new(), SdpError::NoMediaSection),
            ("v=0\r\ns=-\r\n".to_owned(), SdpError::NoMediaSection),
            (
                format!("{offer}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
                SdpError::MultipleMediaSections(2),
            ),
            (
                offer.replace("m=audio", "m=video"),
                SdpError::NotAudio("video".to_owned()),
            ),
            (
                offer.replace("SAVPF 111 126", "SAVPF 111 abc"),
                SdpError::MalformedMediaLine("m=audio 3484 UDP/TLS/RTP/SAVPF 111 abc".to_owned()),
            ),
            (
                offer.replace("m=audio 3484 UDP/TLS/RTP/SAVPF 111 126", "m=audio"),
                SdpError::MalformedMediaLine("m=audio".to_owned()),
            ),
            (offer.replace("opus/48000", "G722/8000"), SdpError::NoOpus),
            (
                offer.replace("SAVPF 111 126", "SAVPF 126"),
                SdpError::NoOpus,
            ),
            (offer.replace("a=mid:audio\r\n", ""), SdpError::MissingMid),
            (
                offer.replace("m=audio 3484 ", "m=audio 0 "),
                SdpError::AudioRejected,
            ),
            (
                offer.replace("a=sendrecv", "a=inactive"),
                SdpError::NotSendrecv("inactive".to_owned()),
            ),
            (
                offer.replace("a=sendrecv", "a=recvonly"),
                SdpError::NotSendrecv("recvonly".to_owned()),
            ),
        ];
        for (sdp, expected) in cases {
            assert_eq!(inspect(&sdp), Err(expected));
        }
    }

    #[test]
    fn inspect_without_fec_or_dtmf() {
        let offer = offer()
            .replace(";useinbandfec=1", "")
            .replace("a=rtpmap:126 telephone-event/8000\r\n", "");
        let info = inspect(&offer).unwrap();
        assert!(!info.opus_fec);
        assert_eq!(info.telephone_event_payload_type, None);
    }

    #[test]
    fn the_opus_bitrate_cap_is_read_only_when_it_is_a_bitrate_opus_allows() {
        let with = |cap: &str| {
            let offer = offer().replace("maxaveragebitrate=20000", cap);
            inspect(&offer).unwrap().opus_max_average_bitrate
        };
        assert_eq!(with("maxaveragebitrate=16000"), Some(16_000));
        assert_eq!(with(" MaxAverageBitrate = 12000 "), Some(12_000));
        assert_eq!(with("maxaveragebitrate=5999"), None);
        assert_eq!(with("maxaveragebitrate=9999999999"), None);
        assert_eq!(with("maxaveragebitrate=lots"), None);
        assert_eq!(with("maxplaybackrate=16000"), None);
    }

    /// Found by fuzzing (`fuzz::sdp`): these were accepted, and the call opened an AI session
    /// before the WebRTC stack refused the offer.
    #[test]
    fn an_offer_without_ice_credentials_or_fingerprint_is_refused() {
        let offer = offer();
        let line = |prefix: &str| {
            let line = offer.lines().find(|l| l.starts_with(prefix)).expect(prefix);
            format!("{line}\r\n")
        };
        let cases = [
            (
                offer.replace(&line("a=ice-ufrag:"), ""),
                SdpError::MissingIceCredentials,
            ),
            (
                offer.replace(&line("a=ice-pwd:"), "a=ice-pwd: \r\n"),
                SdpError::MissingIceCredentials,
            ),
            (
                offer.replace(&line("a=fingerprint:"), ""),
                SdpError::MissingFingerprint,
            ),
            (
                offer.replace(&line("a=fingerprint:"), "a=fingerprint:sha-256\r\n"),
                SdpError::MissingFingerprint,
            ),
        ];
        for (sdp, expected) in cases {
            assert_eq!(inspect(&sdp), Err(expected));
        }
    }

    /// The spec offer with `edit` applied to its text.
    fn spec_offer_with(edit: impl FnOnce(String) -> String) -> String {
        edit(testkit::fixtures::meta_offer())
    }

    #[test]
    fn opus_parameters_the_stack_compares_state_the_bridges_values_and_others_are_kept() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 126 0\r\na=rtpmap:111 opus/48000/2\r\n\
                     a=fmtp:111 minptime=10; useinbandfec=0;maxaveragebitrate=20000\r\n\
                     a=rtpmap:126 telephone-event/8000\r\na=fmtp:126 0-15\r\n\
                     a=fmtp:0 minptime=10\r\n";
        let prepared = opus_fmtp_for_stack(offer);
        assert!(
            prepared.contains("a=fmtp:111 maxaveragebitrate=20000;minptime=20;useinbandfec=1\r\n"),
            "{prepared}"
        );
        assert!(
            prepared.contains("a=fmtp:126 0-15\r\n"),
            "other codecs untouched"
        );
        assert!(
            prepared.contains("a=fmtp:0 minptime=10\r\n"),
            "not Opus: untouched"
        );
        assert_eq!(opus_fmtp_for_stack(&prepared), prepared, "idempotent");
        // What the caller said is still read from its own offer.
        let no_fec = offer.replace("useinbandfec=0", "USEINBANDFEC=0");
        assert!(
            opus_fmtp_for_stack(&no_fec)
                .contains("a=fmtp:111 maxaveragebitrate=20000;minptime=20;useinbandfec=1\r\n")
        );
    }

    #[test]
    fn an_offer_without_a_direction_is_made_sendrecv_as_rfc_8866_says() {
        let offer = spec_offer_with(|o| o.replace("a=sendrecv\r\n", ""));
        assert!(!offer.contains("a=sendrecv"));
        let prepared = prepare_offer(&offer);
        assert!(prepared.direction_added);
        assert_eq!(prepared.sdp.matches("a=sendrecv\r\n").count(), 1);
        assert!(inspect(&prepared.sdp).is_ok());

        let misspelt = spec_offer_with(|o| o.replace("a=sendrecv", "a=sndrecv"));
        assert!(prepare_offer(&misspelt).direction_added);

        let explicit = prepare_offer(&testkit::fixtures::meta_offer());
        assert!(!explicit.direction_added);
        assert_eq!(explicit.sdp.matches("a=sendrecv").count(), 1);
    }

    #[test]
    fn unusable_candidates_are_dropped_and_counted() {
        let offer = spec_offer_with(|o| {
            o.replace(
                "a=ice-ufrag",
                "a=candidate:9 1 udp 2122260223 198.51.100.9 0 typ host\r\n\
                 a=candidate:8 1 tcp 2122260223 198.51.100.8 9 typ host tcptype active\r\n\
                 a=candidate:garbage\r\n\
                 a=ice-ufrag",
            )
        });
        let original = inspect(&testkit::fixtures::meta_offer())
            .expect("usable")
            .candidates;
        assert_eq!(inspect(&offer).expect("usable").candidates, original + 3);
        let prepared = prepare_offer(&offer);
        assert_eq!(prepared.dropped_candidates, 3);
        assert_eq!(inspect(&prepared.sdp).expect("usable").candidates, original);
        assert!(!prepared.sdp.contains(" 0 typ host"));
    }

    #[test]
    fn garbage_never_panics() {
        let inputs = [
            "\r",
            "\n",
            "\r\n\r\n",
            "m=",
            "m= ",
            "m=audio 1 2 999",
            "a=",
            "a=fingerprint:",
            "a=rtpmap:",
            "a=rtpmap:111",
            "a=rtpmap:x opus/",
            "a=fmtp:111",
            "a=ssrc:",
            "m=audio 1 P 111\na=rtpmap:111 opus\na=fmtp:\na=rtcp-fb:",
            "é\r\nm=audio é é é",
            "\u{0}\u{1}m=audio\u{0}",
        ];
        for input in inputs {
            let _ = inspect(input);
            let _ = validate_answer(input, input);
            let _ = validate_offer(input);
            let normalized = normalize_answer(input);
            assert!(normalized.ends_with("\r\n"));
            let _ = normalize_offer(input);
        }
    }
}
