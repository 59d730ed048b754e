//! Meta-shaped webhook bodies (spec §4, §12) for the phone doubles, tests and scripts: `calls`
//! (call events and BIC statuses) and `messages` (what the user writes, a call-permission reply).
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
    let ends = CallEnds {
        call_id,
        user,
        business_initiated: false,
        timestamp,
        answered_duration,
        failed,
    };
    terminate_webhook(line, &ends)
}

/// A BIC `terminate` (from = business, to = user): `answered_duration` adds `start_time`,
/// `end_time` and `duration`; `None` is a call the user declined or never picked up.
pub fn bic_terminate(
    line: &BusinessLine,
    call_id: &CallId,
    user: &PhoneNumber,
    timestamp: u64,
    answered_duration: Option<u64>,
) -> String {
    let ends = CallEnds {
        call_id,
        user,
        business_initiated: true,
        timestamp,
        answered_duration,
        failed: false,
    };
    terminate_webhook(line, &ends)
}

/// How a call ended, for its `terminate`.
struct CallEnds<'a> {
    call_id: &'a CallId,
    user: &'a PhoneNumber,
    business_initiated: bool,
    timestamp: u64,
    answered_duration: Option<u64>,
    failed: bool,
}

fn terminate_webhook(line: &BusinessLine, ends: &CallEnds<'_>) -> String {
    let CallEnds {
        call_id,
        user,
        business_initiated,
        timestamp,
        answered_duration,
        failed,
    } = *ends;
    let (from, to, direction) = if business_initiated {
        (
            line.display_phone_number.as_str(),
            user.as_str(),
            "BUSINESS_INITIATED",
        )
    } else {
        (
            user.as_str(),
            line.display_phone_number.as_str(),
            "USER_INITIATED",
        )
    };
    let mut fields = vec![
        ("id", Json::str(call_id.as_str())),
        ("from", Json::str(from)),
        ("to", Json::str(to)),
        ("event", Json::str("terminate")),
        ("timestamp", Json::str(timestamp.to_string())),
        ("direction", Json::str(direction)),
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

/// The user's reply to a call-permission request, or a permission granted automatically (§4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionReply {
    /// The reply's own message id (`wamid.…`).
    pub message_id: String,
    /// `context.id`: the request's message id, or a missed call's id; `None` for none.
    pub context_id: Option<String>,
    /// `response`: `accept` or `reject`.
    pub accepted: bool,
    /// `is_permanent`.
    pub permanent: bool,
    /// `expiration_timestamp`, UNIX seconds, for a temporary grant.
    pub expires_at: Option<u64>,
    /// `response_source`: `user_action` or `automatic`.
    pub source: String,
}

/// A `messages` webhook carrying the user's call-permission reply, the §4.6 shape.
pub fn permission_reply(
    line: &BusinessLine,
    user: &PhoneNumber,
    user_name: &str,
    reply: &PermissionReply,
    timestamp: u64,
) -> String {
    let mut answer = vec![
        (
            "response",
            Json::str(if reply.accepted { "accept" } else { "reject" }),
        ),
        ("is_permanent", Json::Bool(reply.permanent)),
    ];
    if let Some(expires_at) = reply.expires_at {
        answer.push(("expiration_timestamp", Json::str(expires_at.to_string())));
    }
    answer.push(("response_source", Json::str(&reply.source)));
    let mut message = vec![
        ("from", Json::str(user.as_str())),
        ("id", Json::str(&reply.message_id)),
        ("timestamp", Json::str(timestamp.to_string())),
    ];
    if let Some(context_id) = &reply.context_id {
        message.push((
            "context",
            Json::obj([
                ("from", Json::str(user.as_str())),
                ("id", Json::str(context_id)),
            ]),
        ));
    }
    message.push(("type", Json::str("interactive")));
    message.push((
        "interactive",
        Json::obj([
            ("type", Json::str("call_permission_reply")),
            ("call_permission_reply", Json::Obj(answer)),
        ]),
    ));
    messages_webhook(line, user, user_name, Json::Obj(message))
}

/// A `messages` webhook carrying a text the user wrote to the business.
pub fn text_message(
    line: &BusinessLine,
    user: &PhoneNumber,
    user_name: &str,
    message_id: &str,
    text: &str,
    timestamp: u64,
) -> String {
    let message = Json::obj([
        ("from", Json::str(user.as_str())),
        ("id", Json::str(message_id)),
        ("timestamp", Json::str(timestamp.to_string())),
        ("text", Json::obj([("body", Json::str(text))])),
        ("type", Json::str("text")),
    ]);
    messages_webhook(line, user, user_name, message)
}

fn messages_webhook(
    line: &BusinessLine,
    user: &PhoneNumber,
    user_name: &str,
    message: Json,
) -> String {
    let contacts = Json::Arr(vec![Json::obj([
        ("profile", Json::obj([("name", Json::str(user_name))])),
        ("wa_id", Json::str(user.as_str())),
    ])]);
    let value = Json::obj([
        ("messaging_product", Json::str("whatsapp")),
        ("metadata", metadata(line)),
        ("contacts", contacts),
        ("messages", Json::Arr(vec![message])),
    ]);
    let change = Json::obj([("value", value), ("field", Json::str("messages"))]);
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
    Bool(bool),
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
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
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
        self, CallStatus, ConnectEvent, Direction, PermissionReplyEvent, SdpType, TerminateStatus,
        UserMessageEvent, WebhookEvent,
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
            "permission_reply" => testkit::fixtures::PERMISSION_REPLY,
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

    #[test]
    fn bic_terminate_is_from_the_business_and_unanswered_without_times() {
        let body = bic_terminate(&BusinessLine::default(), &call_id(), &user(), 7, None);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let call = &parsed["entry"][0]["changes"][0]["value"]["calls"][0];
        assert_eq!(call["from"], "15550001111");
        assert_eq!(call["to"], USER);
        assert_eq!(call["direction"], "BUSINESS_INITIATED");
        let WebhookEvent::Terminate(event) = only_event(&body) else {
            panic!("expected a terminate");
        };
        assert!(!event.answered);
        let answered = bic_terminate(&BusinessLine::default(), &call_id(), &user(), 70, Some(60));
        let WebhookEvent::Terminate(event) = only_event(&answered) else {
            panic!("expected a terminate");
        };
        assert!(event.answered);
        assert_eq!(event.duration_seconds, Some(60));
    }

    #[test]
    fn permission_reply_is_byte_for_byte_the_spec_sample() {
        let reply = PermissionReply {
            message_id:
                "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggRjFBMkIzQzRENUU2RjdBOEI5QzBEMUUyRjNBNEI1QzYA"
                    .to_owned(),
            context_id: Some(
                "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQTdCOEM5RDBFMUYyQTNCNEM1AA==".to_owned(),
            ),
            accepted: true,
            permanent: false,
            expires_at: Some(1_761_294_800),
            source: "user_action".to_owned(),
        };
        let body = permission_reply(
            &BusinessLine::default(),
            &user(),
            "Ada Lovelace",
            &reply,
            1_760_690_000,
        );
        assert_eq!(body, fixture("permission_reply"));
        let WebhookEvent::PermissionReply(event) = only_event(&body) else {
            panic!("expected a permission reply");
        };
        assert_eq!(
            event,
            PermissionReplyEvent {
                user: user(),
                accepted: true,
                permanent: false,
                expires_at: Some(1_761_294_800),
                source: "user_action".to_owned(),
                context_id: reply.context_id.clone(),
                message_id: reply.message_id.clone(),
                timestamp: Some(1_760_690_000),
            }
        );
        let rejected = PermissionReply {
            accepted: false,
            expires_at: None,
            context_id: None,
            ..reply
        };
        let body = permission_reply(&BusinessLine::default(), &user(), "Ada", &rejected, 1);
        assert!(!body.contains("expiration_timestamp") && !body.contains("context"));
        let WebhookEvent::PermissionReply(event) = only_event(&body) else {
            panic!("expected a permission reply");
        };
        assert!(!event.accepted);
        assert_eq!((event.expires_at, event.context_id), (None, None));
    }

    #[test]
    fn text_message_parses_into_a_user_message() {
        let body = text_message(
            &BusinessLine::default(),
            &user(),
            "José",
            "wamid.IN1",
            "Call me at 5 — thanks",
            1_760_690_100,
        );
        assert!(body.is_ascii());
        assert!(body.contains(r#""field":"messages""#), "{body}");
        assert_eq!(
            only_event(&body),
            WebhookEvent::UserMessage(UserMessageEvent {
                user: user(),
                message_id: "wamid.IN1".to_owned(),
                kind: "text".to_owned(),
                timestamp: Some(1_760_690_100),
            })
        );
    }
}
