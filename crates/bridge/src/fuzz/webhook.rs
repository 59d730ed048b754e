//! `whatsapp::webhook::parse`, the parser `POST /webhook` runs on a signed body: any bytes,
//! generated webhook envelopes of every shape, and Meta's own payloads with parts replaced.
//!
//! Properties: it never panics; a body that is JSON is never an error; what it accepts carries
//! what the handler needs; and every accepted event, written back as a plain webhook, reads
//! back as the same event with nothing ignored.

use proptest::prelude::*;
use serde_json::{Value, json};
use testkit::fixtures::{
    BIC_STATUS_RINGING, CONNECT_UIC, PERMISSION_REPLY, TERMINATE_COMPLETED, TERMINATE_FAILED,
};

use super::{any_json, array, config, deeply_nested, field, json_like_text, object, text, word};
use crate::whatsapp::webhook::{
    CallStatus, ConnectEvent, Direction, ParsedWebhook, SdpType, TerminateStatus, WebhookError,
    WebhookEvent, parse,
};

fn phone() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => "\\+?[0-9]{1,20}".prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => text(),
    ]
    .boxed()
}

fn timestamp() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<u64>().prop_map(|t| Value::from(t.to_string())),
        any::<u64>().prop_map(Value::from),
        text(),
    ]
    .boxed()
}

fn call_id() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => "wacid\\.[A-Za-z0-9+/=_-]{0,100}".prop_map(Value::from),
        1 => text(),
    ]
    .boxed()
}

fn sdp() -> BoxedStrategy<Value> {
    prop_oneof![
        2 => Just(Value::from(testkit::fixtures::meta_offer())),
        1 => Just(Value::from(testkit::fixtures::META_ANSWER)),
        2 => text(),
    ]
    .boxed()
}

fn error() -> BoxedStrategy<Value> {
    let code = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<i64>().prop_map(|c| Value::from(format!(" {c} "))),
        text(),
    ]
    .boxed();
    object(vec![
        ("code", field(code)),
        ("title", field(text())),
        ("message", field(text())),
        (
            "error_data",
            field(object(vec![("details", field(text()))])),
        ),
    ])
}

fn call() -> BoxedStrategy<Value> {
    let status = prop_oneof![
        word(&["COMPLETED", "FAILED", "REJECTED", " completed "]),
        array(word(&["COMPLETED", "Failed"]), 2),
    ]
    .boxed();
    let session = object(vec![
        ("sdp_type", field(word(&["offer", "answer"]))),
        ("sdp", field(sdp())),
    ]);
    object(vec![
        ("id", field(call_id())),
        ("event", field(word(&["connect", "terminate", "ringing"]))),
        (
            "direction",
            field(word(&["USER_INITIATED", "BUSINESS_INITIATED"])),
        ),
        ("from", field(phone())),
        ("to", field(phone())),
        ("timestamp", field(timestamp())),
        ("session", field(session)),
        ("status", field(status)),
        ("start_time", field(timestamp())),
        ("end_time", field(timestamp())),
        ("duration", field(timestamp())),
        ("errors", field(array(error(), 4))),
    ])
}

fn status() -> BoxedStrategy<Value> {
    object(vec![
        ("type", field(word(&["call", "message"]))),
        ("id", field(call_id())),
        (
            "status",
            field(word(&["RINGING", "ACCEPTED", "REJECTED", "sent", "read"])),
        ),
        ("recipient_id", field(phone())),
        ("timestamp", field(timestamp())),
    ])
}

fn message() -> BoxedStrategy<Value> {
    let reply = object(vec![
        ("response", field(word(&["accept", "reject", " Accept "]))),
        (
            "is_permanent",
            field(
                prop_oneof![
                    any::<bool>().prop_map(Value::Bool),
                    word(&["true", "false"])
                ]
                .boxed(),
            ),
        ),
        ("expiration_timestamp", field(timestamp())),
        (
            "response_source",
            field(word(&["user_action", "automatic"])),
        ),
    ]);
    let interactive = object(vec![
        (
            "type",
            field(word(&["call_permission_reply", "button_reply"])),
        ),
        ("call_permission_reply", field(reply)),
    ]);
    object(vec![
        ("id", field(text())),
        ("from", field(phone())),
        ("timestamp", field(timestamp())),
        ("type", field(word(&["interactive", "text", "button", " "]))),
        ("interactive", field(interactive)),
        ("context", field(object(vec![("id", field(text()))]))),
    ])
}

fn contact() -> BoxedStrategy<Value> {
    object(vec![
        ("wa_id", field(phone())),
        ("profile", field(object(vec![("name", field(text()))]))),
    ])
}

fn change() -> BoxedStrategy<Value> {
    let phone_number_id = prop_oneof![
        "[0-9]{1,16}".prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text(),
    ]
    .boxed();
    let value = object(vec![
        ("messaging_product", field(word(&["whatsapp"]))),
        (
            "metadata",
            field(object(vec![
                ("phone_number_id", field(phone_number_id)),
                ("display_phone_number", field(phone())),
            ])),
        ),
        ("contacts", field(array(contact(), 3))),
        ("calls", field(array(call(), 4))),
        ("statuses", field(array(status(), 3))),
        ("messages", field(array(message(), 3))),
        ("errors", field(array(error(), 3))),
    ]);
    object(vec![
        (
            "field",
            field(word(&["calls", "messages", "account_update"])),
        ),
        ("value", field(value)),
    ])
}

/// A whole delivery: `object`, `entry[]`, `changes[]`, in random shapes.
fn envelope() -> BoxedStrategy<Value> {
    let entry = object(vec![
        ("id", field(text())),
        ("changes", field(array(change(), 3))),
    ]);
    object(vec![
        (
            "object",
            field(word(&["whatsapp_business_account", "page"])),
        ),
        ("entry", field(array(entry, 3))),
    ])
}

/// Meta's fixture payloads with some of their nodes replaced by any JSON or removed.
fn mutated_fixture() -> BoxedStrategy<Value> {
    let fixtures: Vec<Value> = [
        CONNECT_UIC,
        TERMINATE_COMPLETED,
        TERMINATE_FAILED,
        BIC_STATUS_RINGING,
        PERMISSION_REPLY,
    ]
    .iter()
    .map(|text| serde_json::from_str(text).expect("the fixtures are JSON"))
    .collect();
    let mutation = (any::<prop::sample::Index>(), prop::option::of(any_json()));
    (
        prop::sample::select(fixtures),
        proptest::collection::vec(mutation, 1..4),
    )
        .prop_map(|(mut fixture, mutations)| {
            for (at, replacement) in mutations {
                let count = node_count(&fixture);
                replace_node(&mut fixture, at.index(count), replacement);
            }
            fixture
        })
        .boxed()
}

fn node_count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(node_count).sum(),
        Value::Object(map) => map.values().map(node_count).sum(),
        _ => 0,
    }
}

/// Replaces the `n`th node in pre-order (the root is 0) by `replacement`, or removes it from
/// its parent when `replacement` is `None` (the root becomes `null`).
fn replace_node(value: &mut Value, n: usize, replacement: Option<Value>) {
    fn walk(value: &mut Value, n: &mut usize, replacement: &mut Option<Option<Value>>) -> bool {
        // Returns true when this node is the one to remove.
        if *n == 0 {
            return match replacement.take() {
                Some(Some(new)) => {
                    *value = new;
                    false
                }
                _ => true,
            };
        }
        *n -= 1;
        match value {
            Value::Array(items) => {
                for i in 0..items.len() {
                    if replacement.is_none() {
                        return false;
                    }
                    if walk(&mut items[i], n, replacement) {
                        items.remove(i);
                        return false;
                    }
                }
            }
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    if replacement.is_none() {
                        return false;
                    }
                    if let Some(child) = map.get_mut(&key)
                        && walk(child, n, replacement)
                    {
                        map.remove(&key);
                        return false;
                    }
                }
            }
            _ => {}
        }
        false
    }
    let mut n = n;
    let mut replacement = Some(replacement);
    if walk(value, &mut n, &mut replacement) {
        *value = Value::Null;
    }
}

/// Writes accepted events back as the plainest webhook Meta could send: one change per event.
fn rewrite(events: &[WebhookEvent]) -> Vec<u8> {
    let changes: Vec<Value> = events.iter().map(event_change).collect();
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "0", "changes": changes }],
    })
    .to_string()
    .into_bytes()
}

fn event_change(event: &WebhookEvent) -> Value {
    let change = |field: &str, phone_number_id: &str, key: &str, item: Value, contacts: Value| {
        json!({ "field": field, "value": {
            "metadata": { "phone_number_id": phone_number_id },
            "contacts": contacts,
            key: [item],
        }})
    };
    let errors = |errors: &[WebhookError]| -> Value {
        errors
            .iter()
            .map(|e| {
                let mut error = json!({ "code": e.code });
                if let Some(title) = &e.title {
                    error["title"] = json!(title);
                }
                if let Some(message) = &e.message {
                    error["message"] = json!(message);
                }
                if let Some(details) = &e.details {
                    error["error_data"] = json!({ "details": details });
                }
                error
            })
            .collect()
    };
    match event {
        WebhookEvent::Connect(c) => {
            let (direction, user_field) = match c.direction {
                Direction::UserInitiated => ("USER_INITIATED", "from"),
                Direction::BusinessInitiated => ("BUSINESS_INITIATED", "to"),
            };
            let sdp_type = match c.session.sdp_type {
                SdpType::Offer => "offer",
                SdpType::Answer => "answer",
            };
            let mut call = json!({
                "id": c.call_id.as_str(),
                "event": "connect",
                "direction": direction,
                "session": { "sdp_type": sdp_type, "sdp": c.session.sdp },
            });
            if let Some(user) = &c.user {
                call[user_field] = json!(user.as_str());
            }
            if let Some(timestamp) = c.timestamp {
                call["timestamp"] = json!(timestamp.to_string());
            }
            let contacts = match (&c.user, &c.user_name) {
                (Some(user), Some(name)) => {
                    json!([{ "wa_id": user.as_str(), "profile": { "name": name } }])
                }
                (None, Some(name)) => json!([{ "profile": { "name": name } }]),
                (_, None) => json!([]),
            };
            change("calls", &c.phone_number_id, "calls", call, contacts)
        }
        WebhookEvent::Terminate(t) => {
            let status = match &t.status {
                TerminateStatus::Completed => "COMPLETED",
                TerminateStatus::Failed => "FAILED",
                TerminateStatus::Other(other) => other,
            };
            let mut call = json!({
                "id": t.call_id.as_str(),
                "event": "terminate",
                "status": status,
                "errors": errors(&t.errors),
            });
            match t.duration_seconds {
                Some(duration) => call["duration"] = json!(duration),
                None if t.answered => call["start_time"] = json!("1"),
                None => {}
            }
            if let Some(timestamp) = t.timestamp {
                call["timestamp"] = json!(timestamp);
            }
            change("calls", &t.phone_number_id, "calls", call, json!([]))
        }
        WebhookEvent::Status(s) => {
            let status = match &s.status {
                CallStatus::Ringing => "RINGING",
                CallStatus::Accepted => "ACCEPTED",
                CallStatus::Rejected => "REJECTED",
                CallStatus::Other(other) => other,
            };
            let mut item = json!({ "type": "call", "id": s.call_id.as_str(), "status": status });
            if let Some(recipient) = &s.recipient {
                item["recipient_id"] = json!(recipient.as_str());
            }
            if let Some(timestamp) = s.timestamp {
                item["timestamp"] = json!(timestamp);
            }
            change("calls", &s.phone_number_id, "statuses", item, json!([]))
        }
        WebhookEvent::PermissionReply(r) => {
            let mut reply = json!({
                "response": if r.accepted { "accept" } else { "reject" },
                "is_permanent": r.permanent,
                "response_source": r.source,
            });
            if let Some(expires_at) = r.expires_at {
                reply["expiration_timestamp"] = json!(expires_at);
            }
            let mut message = json!({
                "from": r.user.as_str(),
                "id": r.message_id,
                "type": "interactive",
                "interactive": { "type": "call_permission_reply", "call_permission_reply": reply },
            });
            if let Some(context) = &r.context_id {
                message["context"] = json!({ "id": context });
            }
            if let Some(timestamp) = r.timestamp {
                message["timestamp"] = json!(timestamp);
            }
            change("messages", "1", "messages", message, json!([]))
        }
        WebhookEvent::UserMessage(m) => {
            let mut message =
                json!({ "from": m.user.as_str(), "id": m.message_id, "type": m.kind });
            if let Some(timestamp) = m.timestamp {
                message["timestamp"] = json!(timestamp);
            }
            change("messages", "1", "messages", message, json!([]))
        }
    }
}

/// What the handler relies on in every accepted event.
fn assert_usable(parsed: &ParsedWebhook) {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for event in &parsed.events {
        match event {
            WebhookEvent::Connect(ConnectEvent {
                call_id,
                phone_number_id,
                user,
                session,
                ..
            }) => {
                assert!(!call_id.as_str().is_empty());
                assert!(!phone_number_id.is_empty());
                assert!(!session.sdp.is_empty());
                assert!(user.as_ref().is_none_or(|u| digits(u.as_str())));
            }
            WebhookEvent::Terminate(t) => {
                assert!(!t.call_id.as_str().is_empty());
                assert!(!t.phone_number_id.is_empty());
            }
            WebhookEvent::Status(s) => {
                assert!(!s.call_id.as_str().is_empty());
                assert!(s.recipient.as_ref().is_none_or(|u| digits(u.as_str())));
            }
            WebhookEvent::PermissionReply(r) => {
                assert!(digits(r.user.as_str()));
                assert!(!r.message_id.is_empty());
            }
            WebhookEvent::UserMessage(m) => {
                assert!(digits(m.user.as_str()));
                assert!(!m.message_id.is_empty());
                assert!(!m.kind.is_empty());
            }
        }
    }
}

/// Parses a body that is JSON, checks the accepted events, and reads them back.
fn check_json_body(body: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse(body).map_err(|e| TestCaseError::fail(format!("JSON refused: {e}")))?;
    assert_usable(&parsed);
    let again = parse(&rewrite(&parsed.events)).expect("the rewritten webhook is JSON");
    prop_assert_eq!(&again.events, &parsed.events);
    prop_assert!(again.ignored.is_empty(), "ignored: {:?}", again.ignored);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(parsed) = parse(&body) {
            assert_usable(&parsed);
        }
    }

    #[test]
    fn json_like_text_never_panics(body in prop_oneof![json_like_text(), deeply_nested()]) {
        if let Ok(parsed) = parse(body.as_bytes()) {
            assert_usable(&parsed);
        }
    }

    #[test]
    fn any_json_is_parsed_and_reads_back_the_same(body in any_json()) {
        check_json_body(body.to_string().as_bytes())?;
    }

    #[test]
    fn generated_envelopes_are_parsed_and_read_back_the_same(body in envelope()) {
        check_json_body(body.to_string().as_bytes())?;
    }

    #[test]
    fn mutated_meta_payloads_are_parsed_and_read_back_the_same(body in mutated_fixture()) {
        check_json_body(body.to_string().as_bytes())?;
    }
}

#[test]
fn the_fixtures_read_back_the_same() {
    for fixture in [
        CONNECT_UIC,
        TERMINATE_COMPLETED,
        TERMINATE_FAILED,
        BIC_STATUS_RINGING,
        PERMISSION_REPLY,
    ] {
        let parsed = parse(fixture.as_bytes()).expect("fixture");
        assert_eq!(parsed.events.len(), 1, "{fixture}");
        check_json_body(fixture.as_bytes()).expect("reads back");
    }
}
