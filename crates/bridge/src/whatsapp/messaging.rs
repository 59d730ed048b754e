//! WhatsApp messages to a user (spec §5.5, §9.1): `POST /{version}/{phone_number_id}/messages`
//! with a free-form text, an approved template, or an interactive call-permission request.
//!
//! Free-form messages (text, interactive) are only delivered inside the 24-hour customer-service
//! window that the user's last message opened; outside it Meta refuses them with 131047
//! ([`GraphErrorKind::OutsideCustomerServiceWindow`](super::graph::GraphErrorKind)) and only a
//! template goes through. Messages are never retried (a replay reaches the user twice).

use serde_json::{Value, json};

use super::graph::{GraphAction, GraphClient, GraphError, Payload};
use crate::ids::PhoneNumber;

impl GraphClient {
    /// POST …/messages, type text. Returns the message id (wamid…).
    pub async fn send_text(&self, to: &PhoneNumber, body: &str) -> Result<String, GraphError> {
        let message = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.as_str(),
            "type": "text",
            "text": { "body": body },
        });
        self.send_message(to, "text", &message).await
    }

    /// POST …/messages, type template: {name, language:{code}, components:[{type:"body", parameters:[{type:"text", text}]…]}] (no components when params is empty).
    pub async fn send_template(
        &self,
        to: &PhoneNumber,
        name: &str,
        language: &str,
        body_params: &[String],
    ) -> Result<String, GraphError> {
        let mut template = json!({ "name": name, "language": { "code": language } });
        if !body_params.is_empty() {
            let parameters: Vec<Value> = body_params
                .iter()
                .map(|text| json!({ "type": "text", "text": text }))
                .collect();
            template["components"] = json!([{ "type": "body", "parameters": parameters }]);
        }
        let message = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.as_str(),
            "type": "template",
            "template": template,
        });
        self.send_message(to, "template", &message).await
    }

    /// POST …/messages, interactive call_permission_request with body text (§9.1).
    pub async fn request_call_permission(
        &self,
        to: &PhoneNumber,
        body_text: &str,
    ) -> Result<String, GraphError> {
        let message = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.as_str(),
            "type": "interactive",
            "interactive": {
                "type": "call_permission_request",
                "action": { "name": "call_permission_request" },
                "body": { "text": body_text },
            },
        });
        self.send_message(to, "call_permission_request", &message)
            .await
    }

    async fn send_message(
        &self,
        to: &PhoneNumber,
        kind: &str,
        message: &Value,
    ) -> Result<String, GraphError> {
        let response = self
            .request(GraphAction::Messages, None, Payload::Json(message))
            .await?;
        let id = message_id(&response)?;
        tracing::info!(to = %to, kind, message_id = %id, "message sent");
        Ok(id)
    }
}

/// `{"messages":[{"id":"wamid.…"}]}` (with `messaging_product` and `contacts` beside it).
pub fn message_id(body: &Value) -> Result<String, GraphError> {
    if body.get("success").and_then(Value::as_bool) == Some(false) {
        return Err(GraphError::Unsuccessful);
    }
    body.get("messages")
        .and_then(|messages| messages.get(0))
        .and_then(|message| message.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            GraphError::InvalidResponse("no messages[0].id in the messages response".to_owned())
        })
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;
    use crate::whatsapp::graph::GraphErrorKind;
    use crate::whatsapp::graph::test_server::server;

    const USER: &str = "447700900123";
    const SENT: &str = r#"{"messaging_product":"whatsapp","contacts":[{"input":"447700900123","wa_id":"447700900123"}],"messages":[{"id":"wamid.SENT1"}]}"#;
    const OUTSIDE_WINDOW: &str = r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},"fbtrace_id":"AbC"}}"#;

    fn user() -> PhoneNumber {
        PhoneNumber::new(USER)
    }

    #[tokio::test]
    async fn send_text_posts_a_text_message_and_returns_its_id() {
        let (client, script) = server(&[(200, SENT)]).await;
        let id = client.send_text(&user(), "See you at 3 pm.").await.unwrap();
        assert_eq!(id, "wamid.SENT1");
        let seen = script.only_request();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/v23.0/106540352242922/messages");
        assert_eq!(
            seen.authorization.as_deref(),
            Some("Bearer test-token-never-logged")
        );
        assert_eq!(
            seen.body,
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": USER,
                "type": "text",
                "text": { "body": "See you at 3 pm." },
            })
        );
    }

    #[tokio::test]
    async fn send_template_puts_the_parameters_in_the_body_component() {
        let (client, script) = server(&[(200, SENT), (200, SENT)]).await;
        let params = ["Ada".to_owned(), "3 pm".to_owned()];
        client
            .send_template(&user(), "reminder", "en_US", &params)
            .await
            .unwrap();
        client
            .send_template(&user(), "hello", "en", &[])
            .await
            .unwrap();
        let seen = script.seen.lock().clone();
        assert_eq!(
            seen[0].body,
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": USER,
                "type": "template",
                "template": {
                    "name": "reminder",
                    "language": { "code": "en_US" },
                    "components": [{
                        "type": "body",
                        "parameters": [
                            { "type": "text", "text": "Ada" },
                            { "type": "text", "text": "3 pm" },
                        ],
                    }],
                },
            })
        );
        assert_eq!(
            seen[1].body["template"],
            json!({ "name": "hello", "language": { "code": "en" } })
        );
    }

    #[tokio::test]
    async fn request_call_permission_sends_the_spec_body() {
        let (client, script) = server(&[(200, SENT)]).await;
        client
            .request_call_permission(&user(), "May we call you about order ON-12853?")
            .await
            .unwrap();
        // §9.1, verbatim.
        assert_eq!(
            script.only_request().body,
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "447700900123",
                "type": "interactive",
                "interactive": {
                    "type": "call_permission_request",
                    "action": { "name": "call_permission_request" },
                    "body": { "text": "May we call you about order ON-12853?" },
                },
            })
        );
    }

    #[tokio::test]
    async fn a_refused_message_is_never_retried_and_names_its_kind() {
        let (client, script) = server(&[(400, OUTSIDE_WINDOW), (503, "{}")]).await;
        let error = client.send_text(&user(), "hi").await.unwrap_err();
        assert_eq!(error.code(), Some(131_047));
        assert_eq!(
            error.kind(),
            Some(GraphErrorKind::OutsideCustomerServiceWindow)
        );
        let error = client
            .request_call_permission(&user(), "May we call?")
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert_eq!(script.seen.lock().len(), 2);
    }

    #[tokio::test]
    async fn a_success_without_a_message_id_is_an_invalid_response() {
        let (client, _script) = server(&[
            (200, r#"{"messaging_product":"whatsapp"}"#),
            (200, r#"{"messages":[{"id":""}]}"#),
            (200, r#"{"success":false}"#),
        ])
        .await;
        for _ in 0..2 {
            let error = client.send_text(&user(), "hi").await.unwrap_err();
            assert!(matches!(error, GraphError::InvalidResponse(_)), "{error:?}");
        }
        let error = client.send_text(&user(), "hi").await.unwrap_err();
        assert!(matches!(error, GraphError::Unsuccessful), "{error:?}");
    }
}
