//! Meta-shaped `calls` webhook bodies (spec §4, §12) for the phone double, tests and scripts.
//!
//! Bodies are written the way Meta sends them: compact JSON, keys in Meta's order, every
//! non-ASCII character escaped as `\uXXXX` (lowercase hex). The escaping matters because Meta
//! signs that wire form: a receiver that hashes re-serialised JSON fails only on such bodies.

use std::fmt::Write as _;

use bridge::ids::{CallId, PhoneNumber};

/// Our side of the calls: the business account and number the webhooks are addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessLine {
    /// WhatsApp Business Account id (`entry[].id`).
    pub waba_id: String,
    /// Graph id of the business number (`metadata.phone_number_id`), the routing key.
    pub phone_number_id: String,
    /// The business number itself, digits only (`metadata.display_phone_number`, `to` on UIC).
    pub display_phone_number: String,
}

impl Default for BusinessLine {
    /// The values of the spec's §12 fixtures.
    fn default() -> Self {
        Self {
            waba_id: "102290129340398".to_owned(),
            phone_number_id: "106540352242922".to_owned(),
            display_phone_number: "15550001111".to_owned(),
        }
    }
}

/// A UIC `connect` carrying the user's SDP offer, exactly the §12.1 shape.
pub fn connect_offer(
    line: &BusinessLine,
    call_id: &CallId,
    user: &PhoneNumber,
    user_name: &str,
    sdp_offer: &str,
    timestamp: u64,
) -> String {
    let call = Json::obj([
        ("id", Json::str(call_id.as_str())),
        ("from", Json::str(user.as_str())),
        ("to", Json::str(&line.display_phone_number)),
        ("event", Json::str("connect")),
        ("timestamp", Json::str(timestamp.to_string())),
        ("direction", Json::str("USER_INITIATED")),
        (
            "session",
            Json::obj([
                ("sdp", Json::str(sdp_offer)),
                ("sdp_type", Json::str("offer")),
            ]),
        ),
    ]);
    let contacts = Json::Arr(vec![Json::obj([
        ("profile", Json::obj([("name", Json::str(user_name))])),
        ("wa_id", Json::str(user.as_str())),
    ])]);
    calls_webhook(line, Some(contacts), call, None)
}

/// A UIC `terminate`: §12.3 when `failed` is false, §12.4 (status `FAILED`, media receive timeout
/// 138021 on the call and on the change) when true. `answered_duration` adds `start_time`,
/// `end_time` (= `timestamp`) and `duration`; `None` is a call that was never answered.
///
/// `contacts` is left out (Meta does not always send it on terminate), and so is
/// `biz_opaque_callback_data`.
pub fn terminate(
    line: &BusinessLine,
    call_id: &CallId,
    user: &PhoneNumber,
    timestamp: u64,
    answered_duration: Option<u64>,
    failed: bool,
) -> String {
    let mut fields = vec![
        ("id", Json::str(call_id.as_str())),
        ("from", Json::str(user.as_str())),
        ("to", Json::str(&line.display_phone_number)),
        ("event", Json::str("terminate")),
        ("timestamp", Json::str(timestamp.to_string())),
        ("direction", Json::str("USER_INITIATED")),
    ];
    if let Some(duration) = answered_duration {
        fields.push((
            "start_time",
            Json::str(timestamp.saturating_sub(duration).to_string()),
        ));
        fields.push(("end_time", Json::str(timestamp.to_string())));
        fields.push(("duration", Json::Num(duration)));
    }
    fields.push((
        "status",
        Json::str(if failed { "FAILED" } else { "COMPLETED" }),
    ));
    let errors = failed.then(|| Json::Arr(vec![media_receive_timeout()]));
    if let Some(errors) = &errors {
        fields.push(("errors", errors.clone()));
    }
    calls_webhook(line, None, Json::Obj(fields), errors)
}

/// A BIC `connect` carrying Meta's SDP answer to our offer (from = business, to = user).
pub fn connect_answer(
    line: &BusinessLine,
    call_id: &CallId,
    user: &PhoneNumber,
    sdp_answer: &str,
    timestamp: u64,
) -> String {
    let call = Json::obj([
        ("id", Json::str(call_id.as_str())),
        ("from", Json::str(&line.display_phone_number)),
        ("to", Json::str(user.as_str())),
        ("event", Json::str("connect")),
        ("timestamp", Json::str(timestamp.to_string())),
        ("direction", Json::str("BUSINESS_INITIATED")),
        (
            "session",
            Json::obj([
                ("sdp", Json::str(sdp_answer)),
                ("sdp_type", Json::str("answer")),
            ]),
        ),
    ]);
    calls_webhook(line, None, call, None)
}

/// A BIC call status (`RINGING`, `ACCEPTED`, `REJECTED`), the §12.5 shape without
/// `biz_opaque_callback_data`.
pub fn status(
    line: &BusinessLine,
    call_id: &CallId,
    user: &PhoneNumber,
    status: &str,
    timestamp: u64,
) -> String {
    let status = Json::obj([
        ("id", Json::str(call_id.as_str())),
        ("type", Json::str("call")),
        ("status", Json::str(status)),
        ("timestamp", Json::str(timestamp.to_string())),
        ("recipient_id", Json::str(user.as_str())),
    ]);
    let value = Json::obj([
        ("messaging_product", Json::str("whatsapp")),
        ("metadata", metadata(line)),
        ("statuses", Json::Arr(vec![status])),
    ]);
    // Meta's status deliveries put `field` before `value`.
    let change = Json::obj([("field", Json::str("calls")), ("value", value)]);
    envelope(line, change)
}

fn calls_webhook(
    line: &BusinessLine,
    contacts: Option<Json>,
    call: Json,
    errors: Option<Json>,
) -> String {
    let mut value = vec![
        ("messaging_product", Json::str("whatsapp")),
        ("metadata", metadata(line)),
    ];
    if let Some(contacts) = contacts {
        value.push(("contacts", contacts));
    }
    value.push(("calls", Json::Arr(vec![call])));
    if let Some(errors) = errors {
        value.push(("errors", errors));
    }
    let change = Json::obj([("value", Json::Obj(value)), ("field", Json::str("calls"))]);
    envelope(line, change)
}

fn envelope(line: &BusinessLine, change: Json) -> String {
    let root = Json::obj([
        ("object", Json::str("whatsapp_business_account")),
        (
            "entry",
            Json::Arr(vec![Json::obj([
                ("id", Json::str(&line.waba_id)),
                ("changes", Json::Arr(vec![change])),
            ])]),
        ),
    ]);
    let mut out = String::new();
    root.write(&mut out);
    out
}

fn metadata(line: &BusinessLine) -> Json {
    Json::obj([
        (
            "display_phone_number",
            Json::str(&line.display_phone_number),
        ),
        ("phone_number_id", Json::str(&line.phone_number_id)),
    ])
}

/// The error Meta reports when the user's client got no media from us (§12.4).
fn media_receive_timeout() -> Json {
    Json::obj([
        ("code", Json::Num(138_021)),
        ("title", Json::str("Media receive timeout")),
        ("message", Json::str("Media receive timeout")),
        (
            "error_data",
            Json::obj([(
                "details",
                Json::str("No media received by the WhatsApp client for a long time."),
            )]),
        ),
    ])
}

/// A JSON value that keeps its keys in the order given (serde_json's map sorts them).
#[derive(Clone)]
enum Json {
    Str(String),
    Num(u64),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn str(text: impl Into<String>) -> Self {
        Json::Str(text.into())
    }

    fn obj<const N: usize>(fields: [(&'static str, Json); N]) -> Self {
        Json::Obj(fields.into())
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Str(text) => write_string(text, out),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string literal with Meta's escaping: control characters and every non-ASCII character
/// as `\uXXXX` (UTF-16 units, so characters beyond the BMP become surrogate pairs).
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge::whatsapp::signature;
    use bridge::whatsapp::webhook::{
        self, CallStatus, ConnectEvent, Direction, SdpType, TerminateStatus, WebhookEvent,
    };

    const CALL_ID: &str = "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==";
    const USER: &str = "447700900123";

    fn call_id() -> CallId {
        CallId::new(CALL_ID)
    }

    fn user() -> PhoneNumber {
        PhoneNumber::new(USER)
    }

    /// Removes the whitespace outside strings: the fixture as Meta would put it on the wire.
    fn minify(json: &str) -> String {
        let mut out = String::new();
        let (mut in_string, mut escaped) = (false, false);
        for c in json.chars() {
            if in_string {
                out.push(c);
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                in_string = true;
                out.push(c);
            } else if !c.is_whitespace() {
                out.push(c);
            }
        }
        out
    }

    fn fixture(name: &str) -> String {
        let json = match name {
            "connect_uic" => testkit::fixtures::CONNECT_UIC,
            "terminate_completed" => testkit::fixtures::TERMINATE_COMPLETED,
            "terminate_failed" => testkit::fixtures::TERMINATE_FAILED,
            "bic_status_ringing" => testkit::fixtures::BIC_STATUS_RINGING,
            other => panic!("no fixture {other}"),
        };
        minify(json)
    }

    fn only_event(body: &str) -> WebhookEvent {
        let parsed = webhook::parse(body.as_bytes()).unwrap();
        assert!(parsed.ignored.is_empty(), "{:?}", parsed.ignored);
        assert_eq!(parsed.events.len(), 1);
        parsed.events.into_iter().next().unwrap()
    }

    fn spec_offer() -> String {
        let fixture: serde_json::Value = serde_json::from_str(&fixture("connect_uic")).unwrap();
        fixture["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn connect_offer_is_byte_for_byte_the_spec_fixture() {
        let body = connect_offer(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            "Ada Lovelace",
            &spec_offer(),
            1_760_681_506,
        );
        assert_eq!(body, fixture("connect_uic"));
    }

    #[test]
    fn connect_offer_parses_into_a_uic_connect() {
        let body = connect_offer(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            "Ada Lovelace",
            &spec_offer(),
            1_760_681_506,
        );
        let WebhookEvent::Connect(connect) = only_event(&body) else {
            panic!("expected a connect");
        };
        assert_eq!(
            connect,
            ConnectEvent {
                call_id: call_id(),
                phone_number_id: "106540352242922".to_owned(),
                direction: Direction::UserInitiated,
                user: Some(user()),
                user_name: Some("Ada Lovelace".to_owned()),
                timestamp: Some(1_760_681_506),
                session: webhook::CallSession {
                    sdp_type: SdpType::Offer,
                    sdp: spec_offer(),
                },
            }
        );
    }

    #[test]
    fn non_ascii_names_are_escaped_like_meta_and_survive_parsing() {
        let name = "José Ñúñez 日本 😀 \"quoted\" back\\slash";
        let body = connect_offer(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            name,
            "v=0\r\n",
            1,
        );
        assert!(body.is_ascii());
        assert!(body.contains(r#""name":"Jos\u00e9 \u00d1\u00fa\u00f1ez \u65e5\u672c \ud83d\ude00 \"quoted\" back\\slash""#), "{body}");
        assert!(body.contains(r#""sdp":"v=0\r\n""#));
        let WebhookEvent::Connect(connect) = only_event(&body) else {
            panic!("expected a connect");
        };
        assert_eq!(connect.user_name.as_deref(), Some(name));
        // A receiver must verify the escaped wire bytes, not a re-serialisation.
        let header = signature::sign(b"secret", body.as_bytes());
        assert_eq!(
            signature::verify(b"secret", body.as_bytes(), Some(&header)),
            Ok(())
        );
        let reserialised =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&body).unwrap())
                .unwrap();
        assert!(signature::verify(b"secret", reserialised.as_bytes(), Some(&header)).is_err());
    }

    #[test]
    fn answered_terminate_has_the_spec_shape() {
        let body = terminate(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            1_760_681_633,
            Some(124),
            false,
        );
        let expected = fixture("terminate_completed")
            .replace(
                r#""contacts":[{"profile":{"name":"Ada Lovelace"},"wa_id":"447700900123"}],"#,
                "",
            )
            .replace(r#""biz_opaque_callback_data":"sess-7f3a","#, "");
        assert_eq!(body, expected);
        let WebhookEvent::Terminate(event) = only_event(&body) else {
            panic!("expected a terminate");
        };
        assert_eq!(event.status, TerminateStatus::Completed);
        assert!(event.answered);
        assert_eq!(event.duration_seconds, Some(124));
        assert!(event.errors.is_empty());
    }

    #[test]
    fn failed_terminate_has_the_spec_shape() {
        let body = terminate(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            1_760_681_529,
            Some(20),
            true,
        );
        let expected = fixture("terminate_failed").replace(
            r#""contacts":[{"profile":{"name":"Ada Lovelace"},"wa_id":"447700900123"}],"#,
            "",
        );
        assert_eq!(body, expected);
        let WebhookEvent::Terminate(event) = only_event(&body) else {
            panic!("expected a terminate");
        };
        assert_eq!(event.status, TerminateStatus::Failed);
        assert_eq!(event.errors.len(), 1);
        assert_eq!(event.errors[0].code, 138_021);
    }

    #[test]
    fn unanswered_terminate_is_not_answered() {
        let body = terminate(
            &BusinessLine::default(),
            &call_id(),
            &user(),
            5,
            None,
            false,
        );
        assert!(!body.contains("start_time") && !body.contains("duration"));
        let WebhookEvent::Terminate(event) = only_event(&body) else {
            panic!("expected a terminate");
        };
        assert!(!event.answered);
        assert_eq!(event.timestamp, Some(5));
    }

    #[test]
    fn connect_answer_parses_into_a_bic_connect() {
        let line = BusinessLine {
            waba_id: "1".to_owned(),
            phone_number_id: "2".to_owned(),
            display_phone_number: "3".to_owned(),
        };
        let body = connect_answer(&line, &call_id(), &user(), "v=0\r\n", 9);
        let WebhookEvent::Connect(connect) = only_event(&body) else {
            panic!("expected a connect");
        };
        assert_eq!(connect.phone_number_id, "2");
        assert_eq!(connect.direction, Direction::BusinessInitiated);
        assert_eq!(connect.user, Some(user()));
        assert_eq!(connect.session.sdp_type, SdpType::Answer);
        assert_eq!(connect.session.sdp, "v=0\r\n");
        assert_eq!(connect.timestamp, Some(9));
    }

    #[test]
    fn status_is_the_spec_shape_and_parses() {
        let bic_call = CallId::new(
            "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggQjJDM0Q0RTVGNkE3QjhDOUQwRTFGMkEzQjRDNUQ2RTcgGAsxNTU1MDAwMTExMRUCABUKAA==",
        );
        let body = status(
            &BusinessLine::default(),
            &bic_call,
            &user(),
            "RINGING",
            1_760_690_001,
        );
        let expected =
            fixture("bic_status_ringing").replace(r#","biz_opaque_callback_data":"job-42""#, "");
        assert_eq!(body, expected);
        for (sent, expected) in [
            ("RINGING", CallStatus::Ringing),
            ("ACCEPTED", CallStatus::Accepted),
            ("REJECTED", CallStatus::Rejected),
        ] {
            let body = status(&BusinessLine::default(), &bic_call, &user(), sent, 1);
            let WebhookEvent::Status(event) = only_event(&body) else {
                panic!("expected a status");
            };
            assert_eq!(event.status, expected);
            assert_eq!(event.call_id, bic_call);
            assert_eq!(event.recipient, Some(user()));
        }
    }
}
