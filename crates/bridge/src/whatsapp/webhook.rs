//! Tolerant parsing of Meta's `calls` and `messages` webhooks into events (spec §4).
//!
//! `calls` changes carry call events and BIC call statuses; `messages` changes carry the user's
//! messages (a call-permission reply, §4.6, or anything else the user writes, which opens the
//! customer-service window) and the delivery statuses of our own messages (logged, never acted
//! on).
//!
//! Meta's documentation and its real traffic disagree on types (strings vs numbers, a terminate
//! `status` as string or array, missing `direction`), and Meta keeps adding fields. So the body
//! is walked as a `serde_json::Value`: only a body that is not JSON at all is an error; every
//! element that cannot become an event is skipped with a line in [`ParsedWebhook::ignored`], and
//! the other elements of the same delivery still count.
//!
//! Signed does not mean sane: an element over one of the limits below (or with a call id outside
//! Meta's charset) is refused before it becomes an event, with a line in
//! [`ParsedWebhook::refused`], so it can create no state, reach no API and flood no log.

use serde_json::{Map, Value};

use crate::ids::{CallId, CallIdError, MAX_PHONE_DIGITS, PhoneNumber};

/// Call, status and message elements taken from one delivery; the rest are refused. Meta sends
/// one or a few per delivery.
pub const MAX_EVENTS_PER_WEBHOOK: usize = 100;
/// Error objects one call (or one change) may carry; Meta sends one or two. More, and the
/// element is refused.
pub const MAX_ERRORS_PER_EVENT: usize = 16;
/// An error's `title`, `message` and `details` are cut to this many characters (and marked).
pub const MAX_ERROR_TEXT_CHARS: usize = 512;
/// Longest WhatsApp profile name accepted (WhatsApp itself allows far fewer).
pub const MAX_PROFILE_NAME_CHARS: usize = 256;
/// Largest SDP accepted in a connect. Meta's offers are 1-2 kB.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The WhatsApp user called the business (UIC); the connect carries Meta's SDP offer.
    UserInitiated,
    /// The business called the user (BIC); the connect carries Meta's SDP answer.
    BusinessInitiated,
}

/// Whether a connect's SDP is an offer (UIC) or an answer to our offer (BIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SdpType {
    Offer,
    Answer,
}

/// The `session` object of a connect event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSession {
    pub sdp_type: SdpType,
    /// The SDP exactly as Meta sent it (CRLF line endings).
    pub sdp: String,
}

/// A `connect` call event: a new inbound call (offer) or Meta's answer to our outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectEvent {
    pub call_id: CallId,
    /// Our business number's Graph id (`value.metadata.phone_number_id`), for routing.
    pub phone_number_id: String,
    pub direction: Direction,
    /// The WhatsApp user's number: `from` on UIC, `to` on BIC, falling back to contacts[0].wa_id.
    /// `None` for users known only by a business-scoped user id.
    pub user: Option<PhoneNumber>,
    /// The user's WhatsApp profile name, when Meta sent one.
    pub user_name: Option<String>,
    /// Event time, UNIX seconds: lets the caller drop stale redeliveries (spec §3.3).
    pub timestamp: Option<u64>,
    pub session: CallSession,
}

/// How a call ended, as Meta reports it. Not a reliable "answered" flag (see
/// [`TerminateEvent::answered`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TerminateStatus {
    Completed,
    Failed,
    /// Any other value, upper-cased (e.g. `REJECTED`); empty when Meta sent no status.
    Other(String),
}

/// An error object from a webhook (spec §4.5). Only `code` is guaranteed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookError {
    pub code: i64,
    pub title: Option<String>,
    pub message: Option<String>,
    /// `error_data.details`.
    pub details: Option<String>,
}

/// A `terminate` call event: the call is over, whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateEvent {
    pub call_id: CallId,
    pub phone_number_id: String,
    pub status: TerminateStatus,
    /// `start_time` or `duration` present: the call was answered. Meta may report an unanswered
    /// call as `COMPLETED`, so this, not `status`, tells answered from unanswered.
    pub answered: bool,
    pub duration_seconds: Option<u64>,
    /// The call's own `errors`, or the change's `value.errors` when the call carries none.
    pub errors: Vec<WebhookError>,
    pub timestamp: Option<u64>,
}

/// Progress of a business-initiated call (`statuses[]`, spec §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallStatus {
    Ringing,
    Accepted,
    Rejected,
    /// Any other value, upper-cased.
    Other(String),
}

/// A `statuses[]` element of type `call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    pub call_id: CallId,
    pub phone_number_id: String,
    pub status: CallStatus,
    /// The called user's number (`recipient_id`), when Meta sent one.
    pub recipient: Option<PhoneNumber>,
    pub timestamp: Option<u64>,
}

/// The user's answer to a call-permission request (§4.6), or a permission granted automatically
/// (the user called us with callback permission on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionReplyEvent {
    /// The user who answered (`from`, falling back to `contacts[0].wa_id`).
    pub user: PhoneNumber,
    /// `response` is `accept` (else `reject`).
    pub accepted: bool,
    /// `is_permanent`: a permanent grant, with no expiry.
    pub permanent: bool,
    /// `expiration_timestamp`, UNIX seconds, for a temporary grant.
    pub expires_at: Option<u64>,
    /// "user_action" | "automatic" | other
    pub source: String,
    /// context.id: the request message id or a missed call id
    pub context_id: Option<String>,
    /// The reply's own id (`wamid.…`).
    pub message_id: String,
    pub timestamp: Option<u64>,
}

/// Any other message from the user: it opens (or reopens) the 24-hour customer-service window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMessageEvent {
    pub user: PhoneNumber,
    pub message_id: String,
    /// the message `type` ("text", "button", …)
    pub kind: String,
    pub timestamp: Option<u64>,
}

/// One call event, call status or user message from a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    Connect(ConnectEvent),
    Terminate(TerminateEvent),
    Status(StatusEvent),
    PermissionReply(PermissionReplyEvent),
    UserMessage(UserMessageEvent),
}

/// Why an element was refused: over a limit, or with an id that cannot be Meta's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputRefusal {
    /// The call id is longer than [`MAX_CALL_ID_CHARS`](crate::ids::MAX_CALL_ID_CHARS).
    CallIdTooLong,
    /// The call id has a character outside Meta's charset (a control character, a space…).
    CallIdBadCharacter,
    /// A phone number (`from`, `to`, `wa_id`, `recipient_id`) has more than
    /// [`MAX_PHONE_DIGITS`] digits.
    PhoneNumberTooLong,
    /// A profile name is longer than [`MAX_PROFILE_NAME_CHARS`].
    ProfileNameTooLong,
    /// More than [`MAX_ERRORS_PER_EVENT`] error objects.
    TooManyErrors,
    /// An SDP larger than [`MAX_SDP_BYTES`].
    SdpTooLarge,
    /// Past [`MAX_EVENTS_PER_WEBHOOK`] elements in one delivery.
    TooManyEvents,
}

impl InputRefusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallIdTooLong => "call_id_too_long",
            Self::CallIdBadCharacter => "call_id_bad_character",
            Self::PhoneNumberTooLong => "phone_number_too_long",
            Self::ProfileNameTooLong => "profile_name_too_long",
            Self::TooManyErrors => "too_many_errors",
            Self::SdpTooLarge => "sdp_too_large",
            Self::TooManyEvents => "too_many_events",
        }
    }
}

/// An element refused for [`InputRefusal`] reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedElement {
    pub reason: InputRefusal,
    /// Where in the body (`entry[0].changes[0].calls[3]`); never any of the element's text.
    pub at: String,
}

/// Everything usable in one delivery, in delivery order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedWebhook {
    pub events: Vec<WebhookEvent>,
    /// One line per ignored element (unknown event, malformed element, other object) for
    /// logging. Lines never contain phone numbers or SDP.
    pub ignored: Vec<String>,
    /// Elements refused for being over a limit: nothing of them is acted on.
    pub refused: Vec<RefusedElement>,
    /// Call, status and message elements met so far, against [`MAX_EVENTS_PER_WEBHOOK`].
    elements: usize,
}

impl ParsedWebhook {
    /// Counts one element; refuses it (recording where) past [`MAX_EVENTS_PER_WEBHOOK`].
    fn take_element(&mut self, at: &str) -> bool {
        self.elements += 1;
        if self.elements > MAX_EVENTS_PER_WEBHOOK {
            self.refuse(InputRefusal::TooManyEvents, at);
            return false;
        }
        true
    }

    fn refuse(&mut self, reason: InputRefusal, at: &str) {
        self.refused.push(RefusedElement {
            reason,
            at: at.to_owned(),
        });
    }
}

/// Why an element did not become an event.
enum Skip {
    /// Unusable: a line for the log.
    Ignored(String),
    /// Over a limit.
    Refused(InputRefusal),
}

impl From<&str> for Skip {
    fn from(line: &str) -> Self {
        Self::Ignored(line.to_owned())
    }
}

impl From<String> for Skip {
    fn from(line: String) -> Self {
        Self::Ignored(line)
    }
}

impl From<InputRefusal> for Skip {
    fn from(reason: InputRefusal) -> Self {
        Self::Refused(reason)
    }
}

impl ParsedWebhook {
    fn skip(&mut self, skip: Skip, at: &str) {
        match skip {
            Skip::Ignored(line) => self.ignored.push(format!("{at}: {line}")),
            Skip::Refused(reason) => self.refuse(reason, at),
        }
    }
}

/// A call id from a webhook, checked against [`CallId::parse`].
fn call_id(element: &Map<String, Value>) -> Result<CallId, Skip> {
    let id = element.get("id").and_then(Value::as_str).unwrap_or("");
    CallId::parse(id).map_err(|err| match err {
        CallIdError::Empty => Skip::from("no call id"),
        CallIdError::TooLong => Skip::Refused(InputRefusal::CallIdTooLong),
        CallIdError::BadCharacter => Skip::Refused(InputRefusal::CallIdBadCharacter),
    })
}

/// Refuses a phone number field (string or number) with more than [`MAX_PHONE_DIGITS`]
/// characters; absent or shorter ones pass (whether they are numbers is decided elsewhere).
fn check_number(value: Option<&Value>) -> Result<(), InputRefusal> {
    let too_long = match value {
        Some(Value::String(s)) => {
            s.trim().trim_start_matches('+').chars().count() > MAX_PHONE_DIGITS
        }
        Some(Value::Number(n)) => n.to_string().len() > MAX_PHONE_DIGITS,
        _ => false,
    };
    if too_long {
        Err(InputRefusal::PhoneNumberTooLong)
    } else {
        Ok(())
    }
}

/// Refuses a change whose contacts carry a number or a profile name over the limits.
fn check_contacts(contacts: &[Value]) -> Result<(), InputRefusal> {
    for contact in contacts {
        check_number(contact.get("wa_id"))?;
        let name = contact
            .get("profile")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.chars().count() > MAX_PROFILE_NAME_CHARS {
            return Err(InputRefusal::ProfileNameTooLong);
        }
    }
    Ok(())
}

/// The only way parsing fails: the body is not JSON.
#[derive(Debug, thiserror::Error)]
pub enum WebhookParseError {
    #[error("webhook body is not valid JSON: {0}")]
    InvalidJson(String),
}

/// The `object` value of every WhatsApp Business webhook.
const WHATSAPP_OBJECT: &str = "whatsapp_business_account";

/// Parses a webhook body. Errors only when the body is not JSON; anything else that cannot be
/// used becomes a line in [`ParsedWebhook::ignored`].
pub fn parse(body: &[u8]) -> Result<ParsedWebhook, WebhookParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| WebhookParseError::InvalidJson(e.to_string()))?;
    let mut parsed = ParsedWebhook::default();
    let Some(root) = root.as_object() else {
        parsed
            .ignored
            .push(format!("body is a JSON {}, not an object", kind(&root)));
        return Ok(parsed);
    };
    match root.get("object").and_then(Value::as_str) {
        Some(WHATSAPP_OBJECT) => {}
        other => {
            parsed.ignored.push(format!(
                "object {} is not {WHATSAPP_OBJECT}",
                other.map_or_else(|| "(missing)".to_owned(), quoted)
            ));
            return Ok(parsed);
        }
    }
    let Some(entries) = root.get("entry").and_then(Value::as_array) else {
        parsed.ignored.push("no entry array".to_owned());
        return Ok(parsed);
    };
    for (e, entry) in entries.iter().enumerate() {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            parsed.ignored.push(format!("entry[{e}]: no changes array"));
            continue;
        };
        for (c, change) in changes.iter().enumerate() {
            parse_change(change, &format!("entry[{e}].changes[{c}]"), &mut parsed);
        }
    }
    Ok(parsed)
}

fn parse_change(change: &Value, at: &str, out: &mut ParsedWebhook) {
    let field = change.get("field").and_then(Value::as_str).unwrap_or("");
    if field != "calls" && field != "messages" {
        out.ignored.push(format!(
            "{at}: field {} is neither \"calls\" nor \"messages\"",
            quoted(field)
        ));
        return;
    }
    let Some(value) = change.get("value").and_then(Value::as_object) else {
        out.ignored.push(format!("{at}: no value object"));
        return;
    };
    let Some(phone_number_id) = value
        .get("metadata")
        .and_then(|m| m.get("phone_number_id"))
        .and_then(lenient_string)
        .filter(|id| !id.is_empty())
    else {
        out.ignored
            .push(format!("{at}: no metadata.phone_number_id, cannot route"));
        return;
    };
    let contacts = value
        .get("contacts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Err(reason) = check_contacts(contacts) {
        out.refuse(reason, &format!("{at}.value.contacts"));
        return;
    }
    let change_errors = match value.get("errors") {
        Some(errors) => {
            match parse_errors(errors, &format!("{at}.value.errors"), &mut out.ignored) {
                Ok(errors) => errors,
                Err(reason) => {
                    out.refuse(reason, &format!("{at}.value.errors"));
                    return;
                }
            }
        }
        None => Vec::new(),
    };
    let ctx = ChangeContext {
        phone_number_id: &phone_number_id,
        contacts,
        change_errors: &change_errors,
    };
    if field == "messages" {
        parse_messages_change(value, &ctx, at, out);
        return;
    }

    let calls = value.get("calls");
    let statuses = value.get("statuses");
    if let Some(calls) = calls {
        match calls.as_array() {
            Some(calls) => {
                for (i, call) in calls.iter().enumerate() {
                    let at = format!("{at}.calls[{i}]");
                    if !out.take_element(&at) {
                        continue;
                    }
                    match parse_call(call, &ctx, &at, &mut out.ignored) {
                        Ok(Some(event)) => out.events.push(event),
                        Ok(None) => out.ignored.push(format!(
                            "{at}: unknown event {}",
                            quoted(call.get("event").and_then(Value::as_str).unwrap_or(""))
                        )),
                        Err(skip) => out.skip(skip, &at),
                    }
                }
            }
            None => out.ignored.push(format!("{at}: calls is not an array")),
        }
    }
    if let Some(statuses) = statuses {
        match statuses.as_array() {
            Some(statuses) => {
                for (i, status) in statuses.iter().enumerate() {
                    let at = format!("{at}.statuses[{i}]");
                    if !out.take_element(&at) {
                        continue;
                    }
                    match parse_status(status, &phone_number_id) {
                        Ok(event) => out.events.push(event),
                        Err(skip) => out.skip(skip, &at),
                    }
                }
            }
            None => out.ignored.push(format!("{at}: statuses is not an array")),
        }
    }
    if calls.is_none() && statuses.is_none() {
        // An error-only change (e.g. 131044 for a call Meta could not deliver): nothing to act
        // on, but the codes belong in the log.
        out.ignored.push(match error_codes(&change_errors) {
            None => format!("{at}: neither calls nor statuses"),
            Some(codes) => format!("{at}: errors without a call: {codes}"),
        });
    }
}

/// A `messages` change: the user's messages become events; the statuses of the messages we
/// sent (sent, delivered, read, failed) are only logged.
fn parse_messages_change(
    value: &Map<String, Value>,
    ctx: &ChangeContext<'_>,
    at: &str,
    out: &mut ParsedWebhook,
) {
    let messages = value.get("messages");
    let statuses = value.get("statuses");
    if let Some(messages) = messages {
        match messages.as_array() {
            Some(messages) => {
                for (i, message) in messages.iter().enumerate() {
                    let at = format!("{at}.messages[{i}]");
                    if !out.take_element(&at) {
                        continue;
                    }
                    match parse_message(message, ctx) {
                        Ok(event) => out.events.push(event),
                        Err(skip) => out.skip(skip, &at),
                    }
                }
            }
            None => out.ignored.push(format!("{at}: messages is not an array")),
        }
    }
    if let Some(statuses) = statuses {
        match statuses.as_array() {
            Some(statuses) => {
                for (i, status) in statuses.iter().enumerate() {
                    out.ignored.push(format!(
                        "{at}.statuses[{i}]: {} status of a message we sent",
                        message_status(status)
                    ));
                }
            }
            None => out.ignored.push(format!("{at}: statuses is not an array")),
        }
    }
    if messages.is_none() && statuses.is_none() {
        out.ignored.push(match error_codes(ctx.change_errors) {
            None => format!("{at}: neither messages nor statuses"),
            Some(codes) => format!("{at}: errors without a message: {codes}"),
        });
    }
}

/// A message status's value for the log: only the values Meta documents, so a hostile body
/// cannot put anything else (such as a phone number) in the line.
fn message_status(status: &Value) -> &'static str {
    const KNOWN: [&str; 6] = ["sent", "delivered", "read", "failed", "deleted", "warning"];
    let text = status
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    KNOWN
        .into_iter()
        .find(|known| *known == text)
        .unwrap_or("an unknown")
}

/// `code (title), …` of a change's errors, or `None` when it carries none.
fn error_codes(errors: &[WebhookError]) -> Option<String> {
    let codes: Vec<String> = errors
        .iter()
        .map(|e| match &e.title {
            Some(title) => format!("{} ({title})", e.code),
            None => e.code.to_string(),
        })
        .collect();
    (!codes.is_empty()).then(|| codes.join(", "))
}

/// A message from the user: a call-permission reply, or any other message.
fn parse_message(message: &Value, ctx: &ChangeContext<'_>) -> Result<WebhookEvent, Skip> {
    let message = message.as_object().ok_or("not an object")?;
    check_number(message.get("from"))?;
    let message_id = message
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or("message without an id")?
        .to_owned();
    let user = message
        .get("from")
        .and_then(phone_number)
        .or_else(|| ctx.contacts.first()?.get("wa_id").and_then(phone_number))
        .ok_or_else(|| format!("message {} has no user number", quoted(&message_id)))?;
    let timestamp = message.get("timestamp").and_then(lenient_u64);
    let kind = message
        .get("type")
        .and_then(Value::as_str)
        .map(|kind| kind.trim().to_ascii_lowercase())
        .filter(|kind| !kind.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let interactive = message.get("interactive");
    let interactive_type = interactive
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind == "interactive" && interactive_type.eq_ignore_ascii_case("call_permission_reply") {
        let reply = interactive
            .and_then(|i| i.get("call_permission_reply"))
            .and_then(Value::as_object)
            .ok_or_else(|| {
                format!(
                    "call_permission_reply {} has no reply object",
                    quoted(&message_id)
                )
            })?;
        let accepted = match reply.get("response").and_then(Value::as_str).map(str::trim) {
            Some(r) if r.eq_ignore_ascii_case("accept") => true,
            Some(r) if r.eq_ignore_ascii_case("reject") => false,
            other => {
                return Err(format!(
                    "call_permission_reply {} has response {}",
                    quoted(&message_id),
                    other.map_or_else(|| "(missing)".to_owned(), quoted)
                )
                .into());
            }
        };
        return Ok(WebhookEvent::PermissionReply(PermissionReplyEvent {
            user,
            accepted,
            permanent: reply.get("is_permanent").is_some_and(lenient_true),
            expires_at: reply.get("expiration_timestamp").and_then(lenient_u64),
            source: reply
                .get("response_source")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
            context_id: message
                .get("context")
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            message_id,
            timestamp,
        }));
    }
    Ok(WebhookEvent::UserMessage(UserMessageEvent {
        user,
        message_id,
        kind,
        timestamp,
    }))
}

/// What the elements of one change share.
struct ChangeContext<'a> {
    phone_number_id: &'a str,
    contacts: &'a [Value],
    change_errors: &'a [WebhookError],
}

/// `Ok(None)` for an event name we do not handle; `Err` for an element we cannot use.
fn parse_call(
    call: &Value,
    ctx: &ChangeContext<'_>,
    at: &str,
    ignored: &mut Vec<String>,
) -> Result<Option<WebhookEvent>, Skip> {
    let call = call.as_object().ok_or("not an object")?;
    let event = call.get("event").and_then(Value::as_str).unwrap_or("");
    if !event.eq_ignore_ascii_case("connect") && !event.eq_ignore_ascii_case("terminate") {
        return Ok(None);
    }
    let call_id = call_id(call)?;
    check_number(call.get("from"))?;
    check_number(call.get("to"))?;
    let timestamp = call.get("timestamp").and_then(lenient_u64);
    if event.eq_ignore_ascii_case("connect") {
        parse_connect(call, call_id, timestamp, ctx).map(|c| Some(WebhookEvent::Connect(c)))
    } else {
        let errors = match call.get("errors") {
            Some(errors) => parse_errors(errors, &format!("{at}.errors"), ignored)?,
            None => Vec::new(),
        };
        Ok(Some(WebhookEvent::Terminate(parse_terminate(
            call, call_id, timestamp, errors, ctx,
        ))))
    }
}

fn parse_connect(
    call: &Map<String, Value>,
    call_id: CallId,
    timestamp: Option<u64>,
    ctx: &ChangeContext<'_>,
) -> Result<ConnectEvent, Skip> {
    let session = call
        .get("session")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("connect {call_id} has no session"))?;
    let sdp_type = match session.get("sdp_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("offer") => SdpType::Offer,
        Some(t) if t.eq_ignore_ascii_case("answer") => SdpType::Answer,
        Some(t) => return Err(format!("connect {call_id} has sdp_type {}", quoted(t)).into()),
        None => return Err(format!("connect {call_id} has no session.sdp_type").into()),
    };
    let sdp = session
        .get("sdp")
        .and_then(Value::as_str)
        .filter(|sdp| !sdp.is_empty())
        .ok_or_else(|| format!("connect {call_id} has no session.sdp"))?;
    if sdp.len() > MAX_SDP_BYTES {
        return Err(InputRefusal::SdpTooLarge.into());
    }
    let sdp = sdp.to_owned();
    // Some samples omit `direction`: an offer can only come from a user's call, an answer only
    // from ours.
    let direction = match call.get("direction").and_then(Value::as_str) {
        Some(d) if d.eq_ignore_ascii_case("USER_INITIATED") => Direction::UserInitiated,
        Some(d) if d.eq_ignore_ascii_case("BUSINESS_INITIATED") => Direction::BusinessInitiated,
        _ => match sdp_type {
            SdpType::Offer => Direction::UserInitiated,
            SdpType::Answer => Direction::BusinessInitiated,
        },
    };
    let user_field = match direction {
        Direction::UserInitiated => "from",
        Direction::BusinessInitiated => "to",
    };
    let user = call
        .get(user_field)
        .and_then(phone_number)
        .or_else(|| ctx.contacts.first()?.get("wa_id").and_then(phone_number));
    Ok(ConnectEvent {
        call_id,
        phone_number_id: ctx.phone_number_id.to_owned(),
        direction,
        user_name: contact_name(ctx.contacts, user.as_ref()),
        user,
        timestamp,
        session: CallSession { sdp_type, sdp },
    })
}

fn parse_terminate(
    call: &Map<String, Value>,
    call_id: CallId,
    timestamp: Option<u64>,
    mut errors: Vec<WebhookError>,
    ctx: &ChangeContext<'_>,
) -> TerminateEvent {
    // Real payloads send a string; doc samples an array of one, in mixed case.
    let status_text = match call.get("status") {
        Some(Value::Array(items)) => items.first().and_then(Value::as_str),
        Some(other) => other.as_str(),
        None => None,
    }
    .unwrap_or("")
    .trim()
    .to_ascii_uppercase();
    let status = match status_text.as_str() {
        "COMPLETED" => TerminateStatus::Completed,
        "FAILED" => TerminateStatus::Failed,
        _ => TerminateStatus::Other(status_text),
    };
    let present = |key: &str| call.get(key).is_some_and(|v| !v.is_null());
    if errors.is_empty() {
        errors = ctx.change_errors.to_vec();
    }
    TerminateEvent {
        call_id,
        phone_number_id: ctx.phone_number_id.to_owned(),
        status,
        answered: present("start_time") || present("duration"),
        duration_seconds: call.get("duration").and_then(lenient_u64),
        errors,
        timestamp,
    }
}

fn parse_status(status: &Value, phone_number_id: &str) -> Result<WebhookEvent, Skip> {
    let status = status.as_object().ok_or("not an object")?;
    match status.get("type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("call") => {}
        Some(other) => {
            return Err(format!("status type {} is not \"call\"", quoted(other)).into());
        }
        None => return Err("status without a type".into()),
    }
    let call_id = call_id(status)?;
    check_number(status.get("recipient_id"))?;
    let text = status
        .get("status")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("status for {call_id} has no status value"))?;
    let status_value = match text.as_str() {
        "RINGING" => CallStatus::Ringing,
        "ACCEPTED" => CallStatus::Accepted,
        "REJECTED" => CallStatus::Rejected,
        _ => CallStatus::Other(text),
    };
    Ok(WebhookEvent::Status(StatusEvent {
        call_id,
        phone_number_id: phone_number_id.to_owned(),
        status: status_value,
        recipient: status.get("recipient_id").and_then(phone_number),
        timestamp: status.get("timestamp").and_then(lenient_u64),
    }))
}

/// Error objects without a usable `code` are skipped, each with an ignored line; their texts are
/// cut to [`MAX_ERROR_TEXT_CHARS`]. More than [`MAX_ERRORS_PER_EVENT`] objects are refused.
fn parse_errors(
    errors: &Value,
    at: &str,
    ignored: &mut Vec<String>,
) -> Result<Vec<WebhookError>, InputRefusal> {
    let Some(errors) = errors.as_array() else {
        ignored.push(format!("{at}: not an array"));
        return Ok(Vec::new());
    };
    if errors.len() > MAX_ERRORS_PER_EVENT {
        return Err(InputRefusal::TooManyErrors);
    }
    Ok(errors
        .iter()
        .enumerate()
        .filter_map(|(i, error)| {
            let code = error.get("code").and_then(lenient_i64);
            if code.is_none() {
                ignored.push(format!("{at}[{i}]: error without a code"));
            }
            let text = |v: Option<&Value>| v.and_then(Value::as_str).map(bounded_text);
            Some(WebhookError {
                code: code?,
                title: text(error.get("title")),
                message: text(error.get("message")),
                details: text(error.get("error_data").and_then(|d| d.get("details"))),
            })
        })
        .collect())
}

/// An error text cut to [`MAX_ERROR_TEXT_CHARS`] characters, with `…` where it was cut.
fn bounded_text(text: &str) -> String {
    let mut chars = text.chars();
    let mut kept: String = chars.by_ref().take(MAX_ERROR_TEXT_CHARS).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    kept
}

/// The profile name of the contact that is `user`; without a user number, the first contact's.
fn contact_name(contacts: &[Value], user: Option<&PhoneNumber>) -> Option<String> {
    let contact = match user {
        Some(user) => contacts.iter().find(|c| {
            c.get("wa_id")
                .and_then(phone_number)
                .is_some_and(|wa_id| &wa_id == user)
        })?,
        None => contacts.first()?,
    };
    contact
        .get("profile")
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// A JSON string, or a number written as its decimal text.
fn lenient_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `true`, or the string `"true"` in any case; anything else is false.
fn lenient_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A non-negative integer sent as a number or a numeric string.
fn lenient_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A user number: digits (optionally after `+`), as a string or a number. Anything else (empty,
/// letters) is not a phone number and yields `None` rather than a mangled number.
fn phone_number(value: &Value) -> Option<PhoneNumber> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return None,
    };
    let digits = text.strip_prefix('+').unwrap_or(&text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| PhoneNumber::new(digits))
}

/// Input text for an ignored line: quoted, escaped, and cut short so a hostile body cannot
/// flood the log.
fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use testkit::fixtures::{
        BIC_STATUS_RINGING, CONNECT_UIC, PERMISSION_REPLY, TERMINATE_COMPLETED, TERMINATE_FAILED,
    };

    const CALL_ID: &str = "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==";
    const PHONE_NUMBER_ID: &str = "106540352242922";
    const USER: &str = "447700900123";

    fn parse_str(body: &str) -> ParsedWebhook {
        parse(body.as_bytes()).expect("valid JSON")
    }

    fn only_event(body: &str) -> WebhookEvent {
        let parsed = parse_str(body);
        assert!(parsed.ignored.is_empty(), "ignored: {:?}", parsed.ignored);
        assert_eq!(parsed.events.len(), 1, "{:?}", parsed.events);
        parsed.events.into_iter().next().unwrap()
    }

    fn only_connect(body: &str) -> ConnectEvent {
        match only_event(body) {
            WebhookEvent::Connect(c) => c,
            other => panic!("expected connect, got {other:?}"),
        }
    }

    fn only_terminate(body: &str) -> TerminateEvent {
        match only_event(body) {
            WebhookEvent::Terminate(t) => t,
            other => panic!("expected terminate, got {other:?}"),
        }
    }

    /// Edits the first call element of a fixture.
    fn with_call(fixture: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        edit_value(fixture, |value| {
            edit(value["calls"][0].as_object_mut().unwrap());
        })
    }

    /// Edits the first change's `value` of a fixture.
    fn edit_value(fixture: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut root: Value = serde_json::from_str(fixture).unwrap();
        edit(&mut root["entry"][0]["changes"][0]["value"]);
        root.to_string()
    }

    /// The reasons of a delivery's refused elements, asserting it made no event.
    fn refused_only(body: &str) -> Vec<InputRefusal> {
        let parsed = parse_str(body);
        assert!(parsed.events.is_empty(), "events: {:?}", parsed.events);
        parsed.refused.iter().map(|r| r.reason).collect()
    }

    #[test]
    fn a_call_id_over_the_limit_or_outside_the_charset_is_refused() {
        let long = with_call(CONNECT_UIC, |call| {
            call.insert(
                "id".into(),
                format!("wacid.{}", "A".repeat(1_000_000)).into(),
            );
        });
        assert_eq!(refused_only(&long), [InputRefusal::CallIdTooLong]);
        for bad in ["wacid.1\nERROR forged", "wacid.1\u{7f}", "wacid. 1"] {
            let body = with_call(TERMINATE_FAILED, |call| {
                call.insert("id".into(), bad.into());
            });
            assert_eq!(
                refused_only(&body),
                [InputRefusal::CallIdBadCharacter],
                "{bad:?}"
            );
        }
        let status = edit_value(BIC_STATUS_RINGING, |value| {
            value["statuses"][0]["id"] = "wacid.\r".into();
        });
        assert_eq!(refused_only(&status), [InputRefusal::CallIdBadCharacter]);
        // The refused line names where, never the id.
        let parsed = parse_str(&long);
        assert_eq!(parsed.refused[0].at, "entry[0].changes[0].calls[0]");
    }

    #[test]
    fn numbers_names_sdp_and_error_lists_over_their_limits_are_refused() {
        let number = with_call(CONNECT_UIC, |call| {
            call.insert("from".into(), "1".repeat(MAX_PHONE_DIGITS + 1).into());
        });
        assert_eq!(refused_only(&number), [InputRefusal::PhoneNumberTooLong]);
        let wa_id = edit_value(CONNECT_UIC, |value| {
            value["contacts"][0]["wa_id"] = "9".repeat(1_000).into();
        });
        assert_eq!(refused_only(&wa_id), [InputRefusal::PhoneNumberTooLong]);
        let name = edit_value(CONNECT_UIC, |value| {
            value["contacts"][0]["profile"]["name"] = "n".repeat(MAX_PROFILE_NAME_CHARS + 1).into();
        });
        assert_eq!(refused_only(&name), [InputRefusal::ProfileNameTooLong]);
        let sdp = with_call(CONNECT_UIC, |call| {
            call["session"]["sdp"] = "a".repeat(MAX_SDP_BYTES + 1).into();
        });
        assert_eq!(refused_only(&sdp), [InputRefusal::SdpTooLarge]);
        let errors = with_call(TERMINATE_FAILED, |call| {
            call.insert(
                "errors".into(),
                (0..=MAX_ERRORS_PER_EVENT)
                    .map(|i| json!({"code": i}))
                    .collect::<Vec<_>>()
                    .into(),
            );
        });
        assert_eq!(refused_only(&errors), [InputRefusal::TooManyErrors]);
    }

    #[test]
    fn values_at_the_limits_are_accepted_and_error_texts_are_cut() {
        let body = with_call(TERMINATE_FAILED, |call| {
            call.insert(
                "id".into(),
                "w".repeat(crate::ids::MAX_CALL_ID_CHARS).into(),
            );
            call.insert(
                "errors".into(),
                (0..MAX_ERRORS_PER_EVENT)
                    .map(|i| json!({"code": i, "message": "m".repeat(10_000)}))
                    .collect::<Vec<_>>()
                    .into(),
            );
        });
        let terminate = only_terminate(&body);
        assert_eq!(terminate.errors.len(), MAX_ERRORS_PER_EVENT);
        let message = terminate.errors[0].message.as_deref().unwrap_or("");
        assert_eq!(message.chars().count(), MAX_ERROR_TEXT_CHARS + 1);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn elements_past_the_per_delivery_limit_are_refused_and_the_first_ones_kept() {
        let body = edit_value(TERMINATE_FAILED, |value| {
            let call = value["calls"][0].clone();
            value["calls"] = (0..MAX_EVENTS_PER_WEBHOOK + 5)
                .map(|i| {
                    let mut call = call.clone();
                    call["id"] = format!("wacid.{i}").into();
                    call
                })
                .collect::<Vec<_>>()
                .into();
        });
        let parsed = parse_str(&body);
        assert_eq!(parsed.events.len(), MAX_EVENTS_PER_WEBHOOK);
        assert_eq!(parsed.refused.len(), 5);
        assert!(
            parsed
                .refused
                .iter()
                .all(|r| r.reason == InputRefusal::TooManyEvents)
        );
    }

    #[test]
    fn a_refused_element_leaves_the_others_of_the_delivery_alone() {
        let body = edit_value(TERMINATE_FAILED, |value| {
            let mut bad = value["calls"][0].clone();
            bad["id"] = "wacid.\n".into();
            value["calls"].as_array_mut().unwrap().insert(0, bad);
        });
        let parsed = parse_str(&body);
        assert_eq!(parsed.refused.len(), 1);
        assert_eq!(parsed.events.len(), 1);
    }

    #[test]
    fn uic_connect_fixture_becomes_one_connect_event() {
        let connect = only_connect(CONNECT_UIC);
        assert_eq!(connect.call_id, CallId::new(CALL_ID));
        assert_eq!(connect.phone_number_id, PHONE_NUMBER_ID);
        assert_eq!(connect.direction, Direction::UserInitiated);
        assert_eq!(connect.user, Some(PhoneNumber::new(USER)));
        assert_eq!(connect.user_name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(connect.timestamp, Some(1_760_681_506));
        assert_eq!(connect.session.sdp_type, SdpType::Offer);
        assert!(connect.session.sdp.starts_with("v=0\r\no=- 1760681506762"));
        assert!(
            connect
                .session
                .sdp
                .ends_with("cname:WhatsAppAudioStream1\r\n")
        );
    }

    #[test]
    fn completed_terminate_fixture_is_answered_with_its_duration() {
        let terminate = only_terminate(TERMINATE_COMPLETED);
        assert_eq!(
            terminate,
            TerminateEvent {
                call_id: CallId::new(CALL_ID),
                phone_number_id: PHONE_NUMBER_ID.to_owned(),
                status: TerminateStatus::Completed,
                answered: true,
                duration_seconds: Some(124),
                errors: vec![],
                timestamp: Some(1_760_681_633),
            }
        );
    }

    #[test]
    fn failed_terminate_fixture_carries_its_error_once() {
        let terminate = only_terminate(TERMINATE_FAILED);
        assert_eq!(terminate.status, TerminateStatus::Failed);
        assert!(terminate.answered);
        assert_eq!(terminate.duration_seconds, Some(20));
        assert_eq!(
            terminate.errors,
            vec![WebhookError {
                code: 138_021,
                title: Some("Media receive timeout".to_owned()),
                message: Some("Media receive timeout".to_owned()),
                details: Some(
                    "No media received by the WhatsApp client for a long time.".to_owned()
                ),
            }]
        );
    }

    #[test]
    fn change_level_errors_stand_in_when_the_call_has_none() {
        let body = with_call(TERMINATE_FAILED, |call| {
            call.remove("errors");
        });
        let terminate = only_terminate(&body);
        assert_eq!(terminate.errors.len(), 1);
        assert_eq!(terminate.errors[0].code, 138_021);
    }

    #[test]
    fn bic_ringing_status_fixture_becomes_a_status_event() {
        let WebhookEvent::Status(status) = only_event(BIC_STATUS_RINGING) else {
            panic!("expected a status");
        };
        assert_eq!(
            status,
            StatusEvent {
                call_id: CallId::new(
                    "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggQjJDM0Q0RTVGNkE3QjhDOUQwRTFGMkEzQjRDNUQ2RTcgGAsxNTU1MDAwMTExMRUCABUKAA=="
                ),
                phone_number_id: PHONE_NUMBER_ID.to_owned(),
                status: CallStatus::Ringing,
                recipient: Some(PhoneNumber::new(USER)),
                timestamp: Some(1_760_690_001),
            }
        );
    }

    #[test]
    fn status_values_are_case_insensitive_and_unknown_ones_kept() {
        for (sent, expected) in [
            ("accepted", CallStatus::Accepted),
            ("REJECTED", CallStatus::Rejected),
            ("Ringing", CallStatus::Ringing),
            ("missed", CallStatus::Other("MISSED".to_owned())),
        ] {
            let body = edit_value(BIC_STATUS_RINGING, |value| {
                value["statuses"][0]["status"] = sent.into();
            });
            let WebhookEvent::Status(status) = only_event(&body) else {
                panic!("expected a status");
            };
            assert_eq!(status.status, expected, "{sent}");
        }
    }

    #[test]
    fn terminate_status_as_array_or_mixed_case_is_understood() {
        for (sent, expected) in [
            (serde_json::json!(["FAILED"]), TerminateStatus::Failed),
            (serde_json::json!("Completed"), TerminateStatus::Completed),
            (serde_json::json!(["completed"]), TerminateStatus::Completed),
            (
                serde_json::json!("Rejected"),
                TerminateStatus::Other("REJECTED".to_owned()),
            ),
            (serde_json::json!([]), TerminateStatus::Other(String::new())),
        ] {
            let body = with_call(TERMINATE_COMPLETED, |call| {
                call.insert("status".to_owned(), sent.clone());
            });
            assert_eq!(only_terminate(&body).status, expected, "{sent}");
        }
        let body = with_call(TERMINATE_COMPLETED, |call| {
            call.remove("status");
        });
        assert_eq!(
            only_terminate(&body).status,
            TerminateStatus::Other(String::new())
        );
    }

    #[test]
    fn numeric_timestamps_durations_and_numbers_are_accepted() {
        let body = with_call(TERMINATE_COMPLETED, |call| {
            call.insert("timestamp".to_owned(), 1_760_681_633u64.into());
            call.insert("start_time".to_owned(), 1_760_681_509u64.into());
            call.insert("duration".to_owned(), "124".into());
        });
        let terminate = only_terminate(&body);
        assert_eq!(terminate.timestamp, Some(1_760_681_633));
        assert!(terminate.answered);
        assert_eq!(terminate.duration_seconds, Some(124));

        let body = with_call(CONNECT_UIC, |call| {
            call.insert("from".to_owned(), 447_700_900_123u64.into());
            call.insert("timestamp".to_owned(), 1_760_681_506u64.into());
        });
        let connect = only_connect(&body);
        assert_eq!(connect.user, Some(PhoneNumber::new(USER)));
        assert_eq!(connect.timestamp, Some(1_760_681_506));
    }

    #[test]
    fn unanswered_terminate_is_not_answered_even_when_completed() {
        let body = with_call(TERMINATE_COMPLETED, |call| {
            for key in ["start_time", "end_time", "duration"] {
                call.remove(key);
            }
        });
        let terminate = only_terminate(&body);
        assert_eq!(terminate.status, TerminateStatus::Completed);
        assert!(!terminate.answered);
        assert_eq!(terminate.duration_seconds, None);
    }

    #[test]
    fn missing_contacts_fall_back_to_from_and_leave_no_name() {
        let body = edit_value(CONNECT_UIC, |value| {
            value.as_object_mut().unwrap().remove("contacts");
        });
        let connect = only_connect(&body);
        assert_eq!(connect.user, Some(PhoneNumber::new(USER)));
        assert_eq!(connect.user_name, None);

        let terminate = only_terminate(&edit_value(TERMINATE_COMPLETED, |value| {
            value.as_object_mut().unwrap().remove("contacts");
        }));
        assert_eq!(terminate.status, TerminateStatus::Completed);
    }

    #[test]
    fn missing_from_falls_back_to_the_first_contact() {
        let body = with_call(CONNECT_UIC, |call| {
            call.remove("from");
        });
        let connect = only_connect(&body);
        assert_eq!(connect.user, Some(PhoneNumber::new(USER)));
        assert_eq!(connect.user_name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn a_username_user_without_any_number_has_no_user() {
        let body = edit_value(CONNECT_UIC, |value| {
            value["calls"][0].as_object_mut().unwrap().remove("from");
            value["calls"][0]["from_user_id"] = "US.13491208655302741918".into();
            value["contacts"][0]
                .as_object_mut()
                .unwrap()
                .remove("wa_id");
            value["contacts"][0]["user_id"] = "US.13491208655302741918".into();
        });
        let connect = only_connect(&body);
        assert_eq!(connect.user, None);
        assert_eq!(connect.user_name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn missing_direction_is_inferred_from_the_sdp_type() {
        let body = with_call(CONNECT_UIC, |call| {
            call.remove("direction");
        });
        assert_eq!(only_connect(&body).direction, Direction::UserInitiated);

        let body = with_call(CONNECT_UIC, |call| {
            call.remove("direction");
            call["session"]["sdp_type"] = "answer".into();
            // On a BIC the user is the callee.
            call.insert("from".to_owned(), "15550001111".into());
            call.insert("to".to_owned(), USER.into());
        });
        let connect = only_connect(&body);
        assert_eq!(connect.direction, Direction::BusinessInitiated);
        assert_eq!(connect.session.sdp_type, SdpType::Answer);
        assert_eq!(connect.user, Some(PhoneNumber::new(USER)));

        let body = with_call(TERMINATE_COMPLETED, |call| {
            call.remove("direction");
        });
        assert!(only_terminate(&body).answered);
    }

    #[test]
    fn unknown_fields_anywhere_are_ignored() {
        let mut root: Value = serde_json::from_str(CONNECT_UIC).unwrap();
        root["new_top_level"] = true.into();
        root["entry"][0]["time"] = 1_760_681_506u64.into();
        let value = &mut root["entry"][0]["changes"][0]["value"];
        value["contacts"][0]["user_id"] = "US.13491208655302741918".into();
        value["contacts"][0]["profile"]["username"] = "ada".into();
        let call = &mut value["calls"][0];
        call["deeplink_payload"] = "promo".into();
        call["cta_payload"] = "button".into();
        call["to_user_id"] = "US.1".into();
        call["connection"] = serde_json::json!({"webrtc": {"sdp": "v=0"}});
        call["session"]["future"] = serde_json::json!({"a": [1, 2]});
        let connect = only_connect(&root.to_string());
        assert_eq!(connect, only_connect(CONNECT_UIC));
    }

    #[test]
    fn unknown_events_are_ignored_with_a_line() {
        let body = with_call(CONNECT_UIC, |call| {
            call.insert("event".to_owned(), "call_created".into());
        });
        let parsed = parse_str(&body);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
        assert!(parsed.ignored[0].contains("call_created"), "{parsed:?}");
    }

    #[test]
    fn malformed_call_elements_are_ignored_not_turned_into_events() {
        type Edit = Box<dyn Fn(&mut Map<String, Value>)>;
        let broken: Vec<Edit> = vec![
            Box::new(|call| {
                call.remove("session");
            }),
            Box::new(|call| {
                call["session"].as_object_mut().unwrap().remove("sdp");
            }),
            Box::new(|call| {
                call["session"]["sdp"] = 42.into();
            }),
            Box::new(|call| {
                call["session"]["sdp_type"] = "pranswer".into();
            }),
            Box::new(|call| {
                call.remove("id");
            }),
            Box::new(|call| {
                call.insert("id".to_owned(), "".into());
            }),
        ];
        for (i, edit) in broken.iter().enumerate() {
            let body = with_call(CONNECT_UIC, |call| edit(call));
            let parsed = parse_str(&body);
            assert!(parsed.events.is_empty(), "case {i}: {parsed:?}");
            assert_eq!(parsed.ignored.len(), 1, "case {i}: {parsed:?}");
        }
    }

    #[test]
    fn ignored_lines_never_contain_the_phone_number() {
        let body = with_call(CONNECT_UIC, |call| {
            call.remove("session");
        });
        let parsed = parse_str(&body);
        assert!(!parsed.ignored[0].contains(USER), "{parsed:?}");
    }

    #[test]
    fn other_objects_are_ignored_with_a_line() {
        let parsed = parse_str(r#"{"object":"page","entry":[]}"#);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
        assert!(parsed.ignored[0].contains("page"));
    }

    #[test]
    fn message_statuses_are_not_call_statuses() {
        // A message delivery status under field "messages".
        let messages =
            BIC_STATUS_RINGING.replace("\"field\": \"calls\"", "\"field\": \"messages\"");
        let parsed = parse_str(&messages);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);

        // A status under field "calls" whose type is not "call".
        let body = edit_value(BIC_STATUS_RINGING, |value| {
            value["statuses"][0]["type"] = "message".into();
        });
        let parsed = parse_str(&body);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
    }

    #[test]
    fn error_only_changes_are_ignored_with_their_codes() {
        let body = edit_value(TERMINATE_FAILED, |value| {
            value.as_object_mut().unwrap().remove("calls");
            value["errors"][0]["code"] = 131_044.into();
        });
        let parsed = parse_str(&body);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
        assert!(parsed.ignored[0].contains("131044"), "{parsed:?}");
    }

    #[test]
    fn batched_deliveries_yield_every_event_in_order() {
        let mut root: Value = serde_json::from_str(CONNECT_UIC).unwrap();
        let connect: Value = root["entry"][0]["changes"][0]["value"]["calls"][0].clone();
        let terminate: Value = serde_json::from_str::<Value>(TERMINATE_COMPLETED).unwrap()["entry"]
            [0]["changes"][0]["value"]["calls"][0]
            .clone();
        let call = |template: &Value, id: &str| {
            let mut call = template.clone();
            call["id"] = id.into();
            call
        };
        root["entry"][0]["changes"][0]["value"]["calls"] =
            Value::Array(vec![call(&connect, "wacid.A"), call(&terminate, "wacid.B")]);
        let mut second = root["entry"][0].clone();
        second["changes"][0]["value"]["calls"] =
            Value::Array(vec![call(&connect, "wacid.C"), call(&terminate, "wacid.D")]);
        root["entry"].as_array_mut().unwrap().push(second);

        let parsed = parse_str(&root.to_string());
        assert!(parsed.ignored.is_empty(), "{parsed:?}");
        let summary: Vec<(&str, &str)> = parsed
            .events
            .iter()
            .map(|event| match event {
                WebhookEvent::Connect(c) => ("connect", c.call_id.as_str()),
                WebhookEvent::Terminate(t) => ("terminate", t.call_id.as_str()),
                WebhookEvent::Status(s) => ("status", s.call_id.as_str()),
                WebhookEvent::PermissionReply(r) => ("permission_reply", r.message_id.as_str()),
                WebhookEvent::UserMessage(m) => ("user_message", m.message_id.as_str()),
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("connect", "wacid.A"),
                ("terminate", "wacid.B"),
                ("connect", "wacid.C"),
                ("terminate", "wacid.D"),
            ]
        );
    }

    #[test]
    fn one_bad_element_does_not_spoil_the_rest_of_the_batch() {
        let body = edit_value(CONNECT_UIC, |value| {
            let good = value["calls"][0].clone();
            value["calls"] = Value::Array(vec!["garbage".into(), serde_json::json!({}), good]);
        });
        let parsed = parse_str(&body);
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.ignored.len(), 2, "{parsed:?}");
    }

    #[test]
    fn terminate_before_connect_and_duplicates_parse_independently() {
        // Ordering and deduplication are the caller's job; the parser keeps each as delivered.
        let terminate = only_terminate(TERMINATE_COMPLETED);
        let first = only_connect(CONNECT_UIC);
        let again = only_connect(CONNECT_UIC);
        assert_eq!(terminate.call_id, first.call_id);
        assert_eq!(first, again);
    }

    #[test]
    fn non_json_bodies_are_errors() {
        for body in [&b""[..], b"not json", b"{\"object\":", b"\xff\xfe"] {
            assert!(matches!(
                parse(body),
                Err(WebhookParseError::InvalidJson(_))
            ));
        }
    }

    #[test]
    fn json_garbage_never_errors_and_never_produces_events() {
        for body in [
            "null",
            "42",
            "[]",
            "\"whatsapp_business_account\"",
            "{}",
            r#"{"object":"whatsapp_business_account"}"#,
            r#"{"object":"whatsapp_business_account","entry":{}}"#,
            r#"{"object":"whatsapp_business_account","entry":[1,{"changes":7}]}"#,
            r#"{"object":"whatsapp_business_account","entry":[{"changes":[null,{"field":"calls"},{"field":"calls","value":{"metadata":{}}}]}]}"#,
            r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"calls","value":{"metadata":{"phone_number_id":"1"},"calls":{},"statuses":[null]}}]}]}"#,
        ] {
            let parsed = parse_str(body);
            assert!(parsed.events.is_empty(), "{body}: {parsed:?}");
            assert!(!parsed.ignored.is_empty(), "{body}");
        }
    }

    const REPLY_ID: &str =
        "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggRjFBMkIzQzRENUU2RjdBOEI5QzBEMUUyRjNBNEI1QzYA";
    const REQUEST_ID: &str = "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQTdCOEM5RDBFMUYyQTNCNEM1AA==";

    /// Edits the first message of the permission-reply fixture.
    fn with_message(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        edit_value(PERMISSION_REPLY, |value| {
            edit(value["messages"][0].as_object_mut().unwrap());
        })
    }

    fn only_reply(body: &str) -> PermissionReplyEvent {
        match only_event(body) {
            WebhookEvent::PermissionReply(reply) => reply,
            other => panic!("expected a permission reply, got {other:?}"),
        }
    }

    fn only_user_message(body: &str) -> UserMessageEvent {
        match only_event(body) {
            WebhookEvent::UserMessage(message) => message,
            other => panic!("expected a user message, got {other:?}"),
        }
    }

    #[test]
    fn the_permission_reply_sample_becomes_an_accepting_reply_to_our_request() {
        assert_eq!(
            only_reply(PERMISSION_REPLY),
            PermissionReplyEvent {
                user: PhoneNumber::new(USER),
                accepted: true,
                permanent: false,
                expires_at: Some(1_761_294_800),
                source: "user_action".to_owned(),
                context_id: Some(REQUEST_ID.to_owned()),
                message_id: REPLY_ID.to_owned(),
                timestamp: Some(1_760_690_000),
            }
        );
    }

    #[test]
    fn rejections_permanent_and_automatic_grants_are_read_with_numbers_or_strings() {
        let body = with_message(|message| {
            let reply = &mut message["interactive"]["call_permission_reply"];
            reply["response"] = "REJECT".into();
            reply["is_permanent"] = "true".into();
            reply["expiration_timestamp"] = 1_761_294_800u64.into();
        });
        let reply = only_reply(&body);
        assert!(!reply.accepted);
        assert!(reply.permanent);
        assert_eq!(reply.expires_at, Some(1_761_294_800));

        // Granted by the user calling us: no request to point at, or a missed call's id.
        let body = with_message(|message| {
            message.insert("from".to_owned(), 447_700_900_123u64.into());
            message.insert("timestamp".to_owned(), 1_760_690_000u64.into());
            message.remove("context");
            let reply = message["interactive"]["call_permission_reply"]
                .as_object_mut()
                .unwrap();
            reply.insert("response_source".to_owned(), "automatic".into());
            reply.insert("is_permanent".to_owned(), true.into());
            reply.remove("expiration_timestamp");
        });
        let reply = only_reply(&body);
        assert_eq!(reply.user, PhoneNumber::new(USER));
        assert_eq!(reply.timestamp, Some(1_760_690_000));
        assert_eq!(reply.source, "automatic");
        assert!(reply.accepted && reply.permanent);
        assert_eq!((reply.expires_at, reply.context_id), (None, None));
    }

    #[test]
    fn any_other_message_from_the_user_is_a_user_message() {
        let text = with_message(|message| {
            message.remove("context");
            message.remove("interactive");
            message.insert("type".to_owned(), "text".into());
            message.insert("text".to_owned(), json!({ "body": "Call me later" }));
        });
        assert_eq!(
            only_user_message(&text),
            UserMessageEvent {
                user: PhoneNumber::new(USER),
                message_id: REPLY_ID.to_owned(),
                kind: "text".to_owned(),
                timestamp: Some(1_760_690_000),
            }
        );
        // A quick-reply button, another interactive reply, a message without a type.
        let button = with_message(|message| {
            message.insert("type".to_owned(), "button".into());
        });
        assert_eq!(only_user_message(&button).kind, "button");
        let list = with_message(|message| {
            message["interactive"] = json!({ "type": "list_reply", "list_reply": { "id": "1" } });
        });
        assert_eq!(only_user_message(&list).kind, "interactive");
        let untyped = with_message(|message| {
            message.remove("type");
        });
        assert_eq!(only_user_message(&untyped).kind, "unknown");
        // Without `from`, the contact is the user.
        let contact_only = with_message(|message| {
            message.remove("from");
        });
        assert_eq!(only_reply(&contact_only).user, PhoneNumber::new(USER));
    }

    #[test]
    fn statuses_of_our_messages_are_ignored_lines_without_numbers() {
        let body = edit_value(PERMISSION_REPLY, |value| {
            let value = value.as_object_mut().unwrap();
            value.remove("messages");
            value.remove("contacts");
            value.insert(
                "statuses".to_owned(),
                json!([
                    {
                        "id": REQUEST_ID,
                        "status": "delivered",
                        "timestamp": "1760690001",
                        "recipient_id": USER,
                        "conversation": { "id": "c1", "origin": { "type": "service" } },
                        "pricing": { "billable": false, "category": "service" },
                    },
                    { "id": REQUEST_ID, "status": "failed", "recipient_id": USER,
                      "errors": [{ "code": 131_047, "title": "Re-engagement message" }] },
                    { "id": REQUEST_ID, "status": USER, "recipient_id": USER },
                    { "type": "call", "status": "RINGING", "id": "wacid.X" },
                ]),
            );
        });
        let parsed = parse_str(&body);
        assert!(parsed.events.is_empty(), "{parsed:?}");
        assert_eq!(parsed.ignored.len(), 4, "{parsed:?}");
        assert!(parsed.ignored[0].contains("delivered"), "{parsed:?}");
        assert!(parsed.ignored[1].contains("failed"), "{parsed:?}");
        for line in &parsed.ignored {
            assert!(!line.contains(USER), "{line}");
        }
    }

    #[test]
    fn messages_and_statuses_in_one_change_keep_their_order_and_the_rest_of_the_batch() {
        let body = edit_value(PERMISSION_REPLY, |value| {
            let reply = value["messages"][0].clone();
            let mut text = reply.clone();
            text["id"] = "wamid.TEXT".into();
            text["type"] = "text".into();
            value["messages"] = json!([reply, "garbage", text]);
            value["statuses"] = json!([{ "id": "wamid.OURS", "status": "read" }]);
        });
        let parsed = parse_str(&body);
        assert_eq!(parsed.events.len(), 2, "{parsed:?}");
        assert!(matches!(parsed.events[0], WebhookEvent::PermissionReply(_)));
        assert!(matches!(
            &parsed.events[1],
            WebhookEvent::UserMessage(m) if m.message_id == "wamid.TEXT"
        ));
        assert_eq!(parsed.ignored.len(), 2, "{parsed:?}");
    }

    #[test]
    fn malformed_messages_are_ignored_with_a_line_and_no_number() {
        type Edit = Box<dyn Fn(&mut Map<String, Value>)>;
        let broken: Vec<Edit> = vec![
            Box::new(|message| {
                message.remove("id");
            }),
            Box::new(|message| {
                message.insert("from".to_owned(), "not a number".into());
            }),
            Box::new(|message| {
                message["interactive"]["call_permission_reply"]["response"] = "maybe".into();
            }),
            Box::new(|message| {
                message["interactive"]["call_permission_reply"]
                    .as_object_mut()
                    .unwrap()
                    .remove("response");
            }),
            Box::new(|message| {
                message["interactive"]
                    .as_object_mut()
                    .unwrap()
                    .remove("call_permission_reply");
            }),
        ];
        for (i, edit) in broken.iter().enumerate() {
            let body = edit_value(PERMISSION_REPLY, |value| {
                if i == 1 {
                    // No number anywhere: neither `from` nor a contact.
                    value.as_object_mut().unwrap().remove("contacts");
                }
                edit(value["messages"][0].as_object_mut().unwrap());
            });
            let parsed = parse_str(&body);
            assert!(parsed.events.is_empty(), "case {i}: {parsed:?}");
            assert_eq!(parsed.ignored.len(), 1, "case {i}: {parsed:?}");
            assert!(!parsed.ignored[0].contains(USER), "case {i}: {parsed:?}");
        }
    }

    #[test]
    fn messages_changes_follow_the_same_envelope_rules() {
        // Unknown fields are ignored.
        let body = with_message(|message| {
            message.insert("referral".to_owned(), json!({ "source_id": "ad" }));
            message["interactive"]["call_permission_reply"]["future"] = json!([1]);
        });
        assert_eq!(only_reply(&body), only_reply(PERMISSION_REPLY));
        // Without a phone number id the change cannot be routed.
        let body = edit_value(PERMISSION_REPLY, |value| {
            value.as_object_mut().unwrap().remove("metadata");
        });
        let parsed = parse_str(&body);
        assert!(parsed.events.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
        // Neither messages nor statuses; errors only.
        let body = edit_value(PERMISSION_REPLY, |value| {
            value.as_object_mut().unwrap().remove("messages");
        });
        let parsed = parse_str(&body);
        assert_eq!(parsed.ignored.len(), 1, "{parsed:?}");
        let body = edit_value(PERMISSION_REPLY, |value| {
            value.as_object_mut().unwrap().remove("messages");
            value["errors"] = json!([{ "code": 131_000, "title": "Something went wrong" }]);
        });
        let parsed = parse_str(&body);
        assert!(parsed.ignored[0].contains("131000"), "{parsed:?}");
        // Other fields are still ignored with a line.
        let other =
            PERMISSION_REPLY.replace("\"field\": \"messages\"", "\"field\": \"account_update\"");
        let parsed = parse_str(&other);
        assert!(parsed.events.is_empty());
        assert!(parsed.ignored[0].contains("account_update"), "{parsed:?}");
    }
}
