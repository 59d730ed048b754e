//! `whatsapp::sdp`: the offer check (`inspect`), the normalisation of our own SDP and the
//! validators, on any text, SDP-shaped lines, and Meta's offer with lines dropped, repeated,
//! swapped, cut, replaced or given other line endings.
//!
//! Properties: nothing panics; an offer `inspect` accepts has what answering it needs (one audio
//! m-line offering Opus with its rtpmap, a mid, ICE credentials, a DTLS fingerprint), and what it
//! reports is what the text says; normalising twice changes nothing.

use proptest::collection::vec;
use proptest::prelude::*;
use testkit::fixtures::{META_ANSWER, meta_offer};

use super::{config, odd_string};
use crate::whatsapp::sdp::{
    OfferInfo, inspect, normalize_answer, normalize_offer, validate_answer, validate_offer,
};

/// A line that looks like SDP, with the attributes the checks read most often.
fn sdp_line() -> BoxedStrategy<String> {
    prop_oneof![
        2 => "[a-z]=[ -~]{0,40}",
        3 => "a=(rtpmap|fmtp|rtcp-fb|mid|candidate|fingerprint|ice-ufrag|ice-pwd|setup|ptime|maxptime|ssrc|extmap|extmap-allow-mixed|ice-lite|sendrecv)(:[ -~]{0,30})?",
        2 => "a=rtpmap:[0-9]{1,4} (opus|OPUS|telephone-event|PCMU|G722)(/[0-9]{1,6}(/[0-9])?)?",
        2 => "m=(audio|video|application|)( [0-9]{0,6})?( [A-Z/]{0,20})?( [0-9]{0,4}){0,5}",
        1 => odd_string(),
    ]
    .boxed()
}

fn line_ending() -> BoxedStrategy<&'static str> {
    prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n", "\r", "", "\r\r\n"]).boxed()
}

/// Lines joined with random endings.
fn sdp_text() -> BoxedStrategy<String> {
    vec((sdp_line(), line_ending()), 0..30)
        .prop_map(|lines| {
            lines
                .into_iter()
                .map(|(line, end)| line + end)
                .collect::<String>()
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum Mutation {
    Drop(prop::sample::Index),
    Repeat(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Replace(prop::sample::Index, String),
    Insert(prop::sample::Index, String),
    /// Cuts the line at a character boundary.
    Cut(prop::sample::Index, prop::sample::Index),
    /// Replaces one character of the line.
    Poke(prop::sample::Index, prop::sample::Index, char),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        3 => index().prop_map(Mutation::Drop),
        1 => index().prop_map(Mutation::Repeat),
        1 => (index(), index()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        2 => (index(), sdp_line()).prop_map(|(at, line)| Mutation::Replace(at, line)),
        2 => (index(), sdp_line()).prop_map(|(at, line)| Mutation::Insert(at, line)),
        1 => (index(), index()).prop_map(|(at, cut)| Mutation::Cut(at, cut)),
        2 => (index(), index(), any::<char>()).prop_map(|(at, c, new)| Mutation::Poke(at, c, new)),
    ]
    .boxed()
}

fn apply(lines: &mut Vec<String>, mutation: &Mutation) {
    if lines.is_empty() {
        if let Mutation::Insert(_, line) | Mutation::Replace(_, line) = mutation {
            lines.push(line.clone());
        }
        return;
    }
    let at = |i: &prop::sample::Index| i.index(lines.len());
    match mutation {
        Mutation::Drop(i) => {
            lines.remove(at(i));
        }
        Mutation::Repeat(i) => {
            let i = at(i);
            lines.insert(i, lines[i].clone());
        }
        Mutation::Swap(a, b) => {
            let (a, b) = (at(a), at(b));
            lines.swap(a, b);
        }
        Mutation::Replace(i, line) => {
            let i = at(i);
            lines[i] = line.clone();
        }
        Mutation::Insert(i, line) => {
            let i = at(i);
            lines.insert(i, line.clone());
        }
        Mutation::Cut(i, cut) => {
            let i = at(i);
            let chars: Vec<char> = lines[i].chars().collect();
            let keep = cut.index(chars.len() + 1);
            lines[i] = chars[..keep].iter().collect();
        }
        Mutation::Poke(i, c, new) => {
            let i = at(i);
            let mut chars: Vec<char> = lines[i].chars().collect();
            if !chars.is_empty() {
                let c = c.index(chars.len());
                chars[c] = *new;
            }
            lines[i] = chars.into_iter().collect();
        }
    }
}

/// Meta's offer (or the spec's answer) after a few mutations, with CRLF or other endings.
fn mutated(base: String) -> BoxedStrategy<String> {
    let lines: Vec<String> = base.lines().map(str::to_owned).collect();
    (vec(mutation(), 1..6), line_ending())
        .prop_map(move |(mutations, end)| {
            let mut lines = lines.clone();
            for mutation in &mutations {
                apply(&mut lines, mutation);
            }
            lines.into_iter().map(|line| line + end).collect()
        })
        .boxed()
}

fn mutated_offer() -> BoxedStrategy<String> {
    mutated(meta_offer())
}

/// Every function of the module on `text`, as an offer and as an answer; checks what `inspect`
/// accepted and that normalising is idempotent.
fn check(text: &str) -> Result<(), TestCaseError> {
    if let Ok(info) = inspect(text) {
        check_accepted(text, &info)?;
    }
    let offer = meta_offer();
    let _ = validate_answer(&offer, text);
    let _ = validate_answer(text, META_ANSWER);
    let _ = validate_offer(text);
    for normalize in [normalize_answer, normalize_offer] {
        let once = normalize(text);
        prop_assert_eq!(&normalize(&once), &once, "normalising twice changed it");
        let _ = validate_answer(text, &once);
        let _ = validate_offer(&once);
    }
    Ok(())
}

/// The lines of `text` as the bridge reads them: split on LF, one trailing CR removed, empty
/// lines left out. Written again here, independently of the module.
fn lines(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
        .collect()
}

/// The value of `a=<name>:<value>` (or `""` for the bare flag).
fn attribute<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("a=")?.strip_prefix(name)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix(':')
    }
}

/// An accepted offer has what answering it needs, and `info` says what the text says.
fn check_accepted(text: &str, info: &OfferInfo) -> Result<(), TestCaseError> {
    let lines = lines(text);
    let m_lines: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("m="))
        .collect();
    prop_assert_eq!(m_lines.len(), 1, "accepted with {} m= lines", m_lines.len());
    let audio = &lines[m_lines[0]..];
    let fields: Vec<&str> = audio[0].split(' ').filter(|f| !f.is_empty()).collect();
    prop_assert_eq!(fields.first().copied(), Some("m=audio"));
    // Payload types are numbers, so `0111` and `+111` are 111 too.
    let offered = |pt: u8| fields.iter().skip(3).any(|f| f.parse() == Ok(pt));
    let opus = info.opus_payload_type;
    prop_assert!(offered(opus), "opus not in the m-line");
    let opus_rtpmap = audio.iter().any(|line| {
        attribute(line, "rtpmap")
            .and_then(|value| value.split_once(' '))
            .is_some_and(|(pt, codec)| {
                pt.parse() == Ok(opus) && codec.trim().to_ascii_lowercase().starts_with("opus/")
            })
    });
    prop_assert!(opus_rtpmap, "no opus rtpmap for {}", opus);
    prop_assert!(!info.mid.is_empty());
    prop_assert!(
        audio
            .iter()
            .any(|line| attribute(line, "mid") == Some(info.mid.as_str()))
    );
    if let Some(pt) = info.telephone_event_payload_type {
        prop_assert!(offered(pt));
    }
    for name in ["ice-ufrag", "ice-pwd"] {
        prop_assert!(
            lines
                .iter()
                .any(|line| attribute(line, name).is_some_and(|v| !v.trim().is_empty())),
            "accepted without a={}",
            name
        );
    }
    let fingerprints: Vec<&str> = lines
        .iter()
        .filter_map(|line| attribute(line, "fingerprint"))
        .collect();
    prop_assert!(
        fingerprints.iter().any(|value| {
            let mut parts = value.split_whitespace();
            parts.next().is_some() && parts.next().is_some()
        }),
        "accepted without an a=fingerprint hash and digest"
    );
    let hashes: Vec<String> = fingerprints
        .iter()
        .filter_map(|value| value.split(' ').next())
        .map(str::to_ascii_lowercase)
        .collect();
    prop_assert_eq!(&info.fingerprints, &hashes);
    let candidates = lines
        .iter()
        .filter(|line| attribute(line, "candidate").is_some())
        .count();
    prop_assert_eq!(info.candidates, candidates);
    prop_assert_eq!(info.ice_lite, lines.contains(&"a=ice-lite"));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn sdp_shaped_lines_never_panic(text in sdp_text()) {
        check(&text)?;
    }

    #[test]
    fn mutated_meta_offers_are_checked(text in mutated_offer()) {
        check(&text)?;
    }

    #[test]
    fn mutated_answers_are_checked(text in mutated(META_ANSWER.to_owned())) {
        check(&text)?;
    }
}

#[test]
fn meta_offer_is_accepted_and_passes_the_checks() {
    let offer = meta_offer();
    let info = inspect(&offer).expect("Meta's offer is usable");
    check_accepted(&offer, &info).expect("it has what answering needs");
    check(&offer).expect("every check holds");
}
