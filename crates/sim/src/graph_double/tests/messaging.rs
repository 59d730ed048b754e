//! Messages through the core's client and raw requests: the customer-service window (131047),
//! approved templates (132001), call-permission requests and their limits (138009, 138017), and
//! Meta's validation of the request.

use bridge::whatsapp::graph::GraphErrorKind;
use bridge::whatsapp::permissions::PermissionStatus;

use super::*;

const USER: &str = "447700900123";
const MESSAGES: &str = "/v23.0/106540352242922/messages";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn user() -> PhoneNumber {
    PhoneNumber::new(USER)
}

#[tokio::test]
async fn text_is_sent_inside_the_window_and_refused_outside_it_with_131047() {
    let double = double().await;
    let client = client(&double);
    let error = client
        .send_text(&user(), "Your appointment is at 3 pm.")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Api {
                status: 400,
                code: 131_047,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.kind(),
        Some(GraphErrorKind::OutsideCustomerServiceWindow)
    );

    double.note_user_message(&user());
    let id = client
        .send_text(&user(), "Your appointment is at 3 pm.")
        .await
        .unwrap();
    assert!(id.starts_with("wamid."), "{id}");

    let messages = double.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (messages[0].status, messages[0].code, messages[0].sent()),
        (400, Some(131_047), false)
    );
    let sent = &messages[1];
    assert_eq!((sent.status, sent.id.as_deref()), (200, Some(id.as_str())));
    assert_eq!(sent.to, user());
    assert_eq!(sent.kind, "text");
    assert_eq!(sent.text, "Your appointment is at 3 pm.");
    assert_eq!(sent.template, None);

    // The window closes a day after the user's last message.
    double.advance_clock(DAY);
    let error = client.send_text(&user(), "Still there?").await.unwrap_err();
    assert_eq!(error.code(), Some(131_047));
}

#[tokio::test]
async fn an_approved_template_goes_out_of_the_window_and_an_unknown_one_is_refused() {
    let double = double().await;
    let client = client(&double);
    let params = ["Ada".to_owned(), "3 pm".to_owned()];
    let id = client
        .send_template(&user(), "reminder", "en_US", &params)
        .await
        .unwrap();
    let error = client
        .send_template(&user(), "promo", "en_US", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Api {
                status: 404,
                code: 132_001,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), Some(GraphErrorKind::TemplateNotFound));

    let messages = double.messages();
    assert_eq!(messages[0].kind, "template");
    assert_eq!(messages[0].template.as_deref(), Some("reminder"));
    assert_eq!(messages[0].text, "Ada | 3 pm");
    assert_eq!(messages[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(messages[1].template.as_deref(), Some("promo"));
    assert!(!messages[1].sent());
}

#[tokio::test]
async fn a_permission_request_needs_the_window_and_follows_the_request_limits() {
    let double = double_with(GraphDoubleConfig {
        default_permission: PermissionStatus::NoPermission,
        ..GraphDoubleConfig::default()
    })
    .await;
    let client = client(&double);
    let ada = user();
    let ask = || client.request_call_permission(&ada, "May we call you about your visit?");
    assert_eq!(ask().await.unwrap_err().code(), Some(131_047));

    double.note_user_message(&user());
    ask().await.unwrap();
    let sent = double.messages().pop().unwrap();
    assert_eq!(sent.kind, "permission_request");
    assert_eq!(sent.text, "May we call you about your visit?");
    // One a day.
    let error = ask().await.unwrap_err();
    assert_eq!(error.kind(), Some(GraphErrorKind::PermissionRequestLimit));
    assert!(
        !client
            .call_permission(&user())
            .await
            .unwrap()
            .can_request_permission
    );

    // Two a week: the next day one more, the day after none.
    double.advance_clock(DAY);
    double.note_user_message(&user());
    ask().await.unwrap();
    double.advance_clock(DAY);
    double.note_user_message(&user());
    assert_eq!(ask().await.unwrap_err().code(), Some(138_009));
    assert_eq!(double.user(&user()).requests_this_week, 2);

    // A connected call resets the count.
    double.note_call_answered(&user());
    ask().await.unwrap();

    // Nobody asks for what is granted for good.
    double.set_permission(&user(), PermissionStatus::Permanent);
    let error = ask().await.unwrap_err();
    assert_eq!(error.code(), Some(138_017));
    assert_eq!(
        error.kind(),
        Some(GraphErrorKind::PermanentPermissionExists)
    );
}

#[tokio::test]
async fn a_sent_message_gets_metas_answer() {
    let double = double().await;
    double.note_user_message(&user());
    let body = json!({
        "messaging_product": "whatsapp",
        "to": "+447700900123",
        "type": "text",
        "text": { "body": "x".repeat(4096), "preview_url": false },
    });
    let (status, response) = post(&double, MESSAGES, &body.to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response,
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": "+447700900123", "wa_id": USER }],
            "messages": [{ "id": "wamid.SIM1" }],
        })
    );
    // `type` defaults to text.
    let body = json!({ "messaging_product": "whatsapp", "to": USER, "text": { "body": "hi" } });
    let (status, _) = post(&double, MESSAGES, &body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(double.messages()[1].kind, "text");
}

#[tokio::test]
async fn malformed_messages_are_refused_like_meta() {
    let double = double().await;
    double.note_user_message(&user());
    let text = |extra: Value| {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "text",
            "text": { "body": "hi" },
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let request = |interactive: Value| {
        json!({
            "messaging_product": "whatsapp",
            "to": USER,
            "type": "interactive",
            "interactive": interactive,
        })
    };
    let cases = [
        (json!("not an object"), "not a JSON object"),
        (
            text(json!({ "messaging_product": "sms" })),
            "messaging_product",
        ),
        (text(json!({ "recipient_type": "group" })), "recipient_type"),
        (text(json!({ "to": "" })), "to must be"),
        (text(json!({ "to": "ada" })), "to must be"),
        (text(json!({ "type": "image" })), "not modelled"),
        (text(json!({ "type": 7 })), "type must be a string"),
        (text(json!({ "text": { "body": "" } })), "text.body"),
        (
            text(json!({ "text": { "body": "x".repeat(4097) } })),
            "text.body",
        ),
        (
            text(json!({ "text": { "preview": true, "body": "hi" } })),
            "text.preview",
        ),
        (text(json!({ "text": "hi" })), "text is required"),
        (
            text(json!({ "status": "read" })),
            "unexpected parameter \"status\"",
        ),
        (
            text(json!({ "template": { "name": "reminder" } })),
            "unexpected parameter \"template\"",
        ),
        (
            text(json!({ "type": "template", "text": null, "template": { "name": "reminder" } })),
            "unexpected parameter \"text\"",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": USER, "type": "template",
                    "template": { "name": "reminder" } }),
            "template.language.code",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": USER, "type": "template",
                    "template": { "name": "reminder", "language": { "code": "en" },
                                  "components": [{ "parameters": [] }] } }),
            "component needs a type",
        ),
        (
            request(
                json!({ "type": "button", "action": { "name": "call_permission_request" },
                            "body": { "text": "May we call?" } }),
            ),
            "not modelled",
        ),
        (
            request(
                json!({ "type": "call_permission_request", "action": { "name": "call" },
                            "body": { "text": "May we call?" } }),
            ),
            "action.name",
        ),
        (
            request(json!({ "type": "call_permission_request",
                            "action": { "name": "call_permission_request" } })),
            "body.text",
        ),
    ];
    for (body, needle) in cases {
        let (status, response) = post(&double, MESSAGES, &body.to_string()).await;
        assert_eq!((status, error_code(&response)), (400, 100), "{body}");
        assert!(details(&response).contains(needle), "{body}: {response}");
    }
    assert!(double.messages().iter().all(|m| !m.sent()));
    let (status, response) = post(&double, MESSAGES, "not json").await;
    assert_eq!((status, error_code(&response)), (400, 100));
    let (status, _) = post_with(&double, MESSAGES, None, &text(json!({})).to_string()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn scripted_failures_and_waits_cover_messages_too() {
    let double = double().await;
    double.note_user_message(&user());
    let client = client(&double);
    double.fail_next("messages", 1, 503, 131_000);
    let waiter = {
        let double = double.clone();
        tokio::spawn(async move {
            double
                .wait_for_message(WAIT, |m| m.kind == "text" && m.sent())
                .await
        })
    };
    let error = client.send_text(&user(), "hi").await.unwrap_err();
    assert_eq!(error.code(), Some(131_000));
    let id = client.send_text(&user(), "hi").await.unwrap();
    let seen = waiter.await.unwrap().expect("the sent message");
    assert_eq!(seen.id.as_deref(), Some(id.as_str()));
    // Already recorded: found at once.
    let past = double
        .wait_for_message(WAIT, |m| m.code == Some(131_000))
        .await
        .unwrap();
    assert_eq!(past.status, 503);
    let never = double
        .wait_for_message(Duration::from_millis(20), |m| m.kind == "template")
        .await;
    assert!(never.is_none());
}
