//! `POST /{version}/{phone_number_id}/messages` (§5.5, §9.1): text, approved templates and the
//! interactive call-permission request, validated like Meta validates them. Free-form messages
//! (text, interactive) only go out inside the user's customer-service window (131047), and a
//! permission request follows the request limits (138009) and is pointless against a permanent
//! permission (138017). Every request is recorded and broadcast.
//!
//! Meta also sends images, audio, lists, buttons…; the double models only what the bridge
//! sends and refuses the rest with 100, saying so.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::meta_error::MetaError;
use super::records::RecordedMessage;
use super::state::{DoubleState, check_target, respond, scripted_delay};
use bridge::ids::PhoneNumber;

/// Meta's limit on a text message's body.
const MAX_TEXT_CHARS: usize = 4096;
/// Meta's limit on an interactive message's body text.
const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;
/// What `template.components[].parameters` are joined with in [`RecordedMessage::text`].
const PARAMETER_SEPARATOR: &str = " | ";

/// The message types the double models; Meta's others are refused with 100.
const MODELLED_TYPES: [&str; 3] = ["text", "template", "interactive"];
/// Top-level fields of a message request the double knows; anything else is refused.
const ALLOWED_FIELDS: [&str; 9] = [
    "messaging_product",
    "recipient_type",
    "to",
    "type",
    "text",
    "template",
    "interactive",
    "context",
    "biz_opaque_callback_data",
];

pub(super) async fn messages(
    State(state): State<Arc<DoubleState>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let received_at = Instant::now();
    let target = (version.as_str(), phone_number_id.as_str(), "messages");
    let outcome = check_target(&state.config, target, &method, Method::POST, &headers)
        .and_then(|()| send(&state, &raw));
    scripted_delay(&state, "messages").await;
    let (status, response) = respond(&state, &outcome);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let described = describe(&body);
    let recorded = RecordedMessage {
        to: described.to,
        kind: described.kind,
        text: described.text,
        template: described.template,
        id: outcome
            .as_ref()
            .ok()
            .and_then(|sent| sent["messages"][0]["id"].as_str().map(str::to_owned)),
        status,
        code: outcome.as_ref().err().map(|error| error.code),
        body,
        received_at,
    };
    tracing::debug!(kind = %recorded.kind, status, "Graph API double answered a message");
    state.inner.lock().messages.push(recorded.clone());
    // No subscriber is fine: the message is in the record.
    let _ = state.messages_tx.send(recorded);
    response
}

/// Every rule of the endpoint; on success the message is sent and Meta's answer returned.
fn send(state: &DoubleState, raw: &[u8]) -> Result<Value, MetaError> {
    let body: Value = serde_json::from_slice(raw)
        .map_err(|_| MetaError::invalid_parameter("the request body is not JSON"))?;
    let body = body
        .as_object()
        .ok_or_else(|| MetaError::invalid_parameter("the request body is not a JSON object"))?;
    if let Some(failure) = state.inner.lock().scripted_failure("messages") {
        return Err(failure);
    }
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(MetaError::invalid_parameter(
            "messaging_product must be \"whatsapp\"",
        ));
    }
    if let Some(extra) = body
        .keys()
        .find(|key| !ALLOWED_FIELDS.contains(&key.as_str()))
    {
        return Err(MetaError::invalid_parameter(format!(
            "unexpected parameter {extra:?}"
        )));
    }
    match body.get("recipient_type") {
        None => {}
        Some(kind) if kind.as_str() == Some("individual") => {}
        Some(_) => {
            return Err(MetaError::invalid_parameter(
                "recipient_type must be \"individual\"",
            ));
        }
    }
    let input = body.get("to").and_then(Value::as_str).unwrap_or("").trim();
    let digits = input.strip_prefix('+').unwrap_or(input);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MetaError::invalid_parameter(
            "to must be the user's phone number",
        ));
    }
    // Meta's default type is text.
    let kind = match body.get("type") {
        None => "text",
        Some(kind) => kind
            .as_str()
            .ok_or_else(|| MetaError::invalid_parameter("type must be a string"))?,
    };
    if !MODELLED_TYPES.contains(&kind) {
        return Err(MetaError::invalid_parameter(format!(
            "message type {kind:?} is not modelled by the double (text, template, interactive)"
        )));
    }
    if let Some(other) = MODELLED_TYPES
        .iter()
        .find(|other| **other != kind && body.contains_key(**other))
    {
        return Err(MetaError::invalid_parameter(format!(
            "unexpected parameter {other:?} for a {kind} message"
        )));
    }
    let free_form = match kind {
        "template" => {
            check_template(state, body)?;
            false
        }
        "interactive" => {
            check_permission_request(body)?;
            true
        }
        _ => {
            check_text(body)?;
            true
        }
    };

    let mut inner = state.inner.lock();
    let now = inner.now();
    if free_form {
        inner.users.may_send_free_form(digits, now)?;
    }
    if kind == "interactive" {
        inner.users.may_request_permission(digits, now)?;
        inner.users.permission_requested(digits, now);
    }
    inner.messages_sent += 1;
    let id = format!("wamid.SIM{}", inner.messages_sent);
    Ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": input, "wa_id": digits }],
        "messages": [{ "id": id }],
    }))
}

/// `text.body`: 1 to 4096 characters; `preview_url` may come with it.
fn check_text(body: &Map<String, Value>) -> Result<(), MetaError> {
    let text = object(body, "text")?;
    only(text, "text", &["body", "preview_url"])?;
    let length = text
        .get("body")
        .and_then(Value::as_str)
        .map(|body| body.chars().count())
        .ok_or_else(|| MetaError::invalid_parameter("text.body is required"))?;
    if !(1..=MAX_TEXT_CHARS).contains(&length) {
        return Err(MetaError::invalid_parameter(format!(
            "text.body must have 1 to {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

/// `template.name` approved, `template.language.code` given, components well-formed.
fn check_template(state: &DoubleState, body: &Map<String, Value>) -> Result<(), MetaError> {
    let template = object(body, "template")?;
    only(
        template,
        "template",
        &["name", "language", "components", "namespace"],
    )?;
    let name = template
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| MetaError::invalid_parameter("template.name is required"))?;
    let language = template
        .get("language")
        .and_then(|language| language.get("code"))
        .and_then(Value::as_str)
        .filter(|code| !code.is_empty())
        .ok_or_else(|| MetaError::invalid_parameter("template.language.code is required"))?;
    if let Some(components) = template.get("components") {
        let components = components
            .as_array()
            .ok_or_else(|| MetaError::invalid_parameter("template.components must be a list"))?;
        for component in components {
            let kind = component.get("type").and_then(Value::as_str);
            if kind.is_none() {
                return Err(MetaError::invalid_parameter(
                    "every template component needs a type",
                ));
            }
            for parameter in component
                .get("parameters")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let text = parameter.get("text").and_then(Value::as_str);
                if parameter.get("type").and_then(Value::as_str) == Some("text") && text.is_none() {
                    return Err(MetaError::invalid_parameter(
                        "a text parameter needs its text",
                    ));
                }
            }
        }
    }
    if !state
        .config
        .templates
        .iter()
        .any(|approved| approved == name)
    {
        return Err(MetaError {
            details: Some(format!(
                "template name ({name}) does not exist in {language}"
            )),
            ..MetaError::coded(404, 132_001)
        });
    }
    Ok(())
}

/// `interactive` of type `call_permission_request` with that action name and a body text.
fn check_permission_request(body: &Map<String, Value>) -> Result<(), MetaError> {
    let interactive = object(body, "interactive")?;
    only(
        interactive,
        "interactive",
        &["type", "action", "body", "header", "footer"],
    )?;
    match interactive.get("type").and_then(Value::as_str) {
        Some("call_permission_request") => {}
        Some(other) => {
            return Err(MetaError::invalid_parameter(format!(
                "interactive type {other:?} is not modelled by the double (call_permission_request)"
            )));
        }
        None => return Err(MetaError::invalid_parameter("interactive.type is required")),
    }
    if interactive
        .get("action")
        .and_then(|action| action.get("name"))
        .and_then(Value::as_str)
        != Some("call_permission_request")
    {
        return Err(MetaError::invalid_parameter(
            "interactive.action.name must be \"call_permission_request\"",
        ));
    }
    let length = interactive
        .get("body")
        .and_then(|body| body.get("text"))
        .and_then(Value::as_str)
        .map(|text| text.chars().count())
        .ok_or_else(|| MetaError::invalid_parameter("interactive.body.text is required"))?;
    if !(1..=MAX_INTERACTIVE_BODY_CHARS).contains(&length) {
        return Err(MetaError::invalid_parameter(format!(
            "interactive.body.text must have 1 to {MAX_INTERACTIVE_BODY_CHARS} characters"
        )));
    }
    Ok(())
}

/// The object `body[key]`, required.
fn object<'a>(
    body: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Map<String, Value>, MetaError> {
    body.get(key).and_then(Value::as_object).ok_or_else(|| {
        MetaError::invalid_parameter(format!("{key} is required for a {key} message"))
    })
}

/// Refuses fields of `object` (named `name`) outside `allowed`.
fn only(object: &Map<String, Value>, name: &str, allowed: &[&str]) -> Result<(), MetaError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(extra) => Err(MetaError::invalid_parameter(format!(
            "unexpected parameter {name}.{extra}"
        ))),
        None => Ok(()),
    }
}

/// What a request asked for, read without judging it (for the record).
struct Described {
    to: PhoneNumber,
    kind: String,
    text: String,
    template: Option<String>,
}

fn describe(body: &Value) -> Described {
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
    let interactive_type = body["interactive"]["type"].as_str();
    let text = match kind {
        "template" => body["template"]["components"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|component| component["type"] == "body")
            .flat_map(|component| {
                component["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|parameter| parameter["text"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join(PARAMETER_SEPARATOR),
        "interactive" => body["interactive"]["body"]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        _ => body["text"]["body"].as_str().unwrap_or("").to_owned(),
    };
    Described {
        to: PhoneNumber::new(body.get("to").and_then(Value::as_str).unwrap_or("")),
        kind: match (kind, interactive_type) {
            ("interactive", Some("call_permission_request")) => "permission_request".to_owned(),
            ("", _) if body.get("text").is_some() => "text".to_owned(),
            (kind, _) => kind.to_owned(),
        },
        text,
        template: (kind == "template")
            .then(|| body["template"]["name"].as_str().map(str::to_owned))
            .flatten(),
    }
}
