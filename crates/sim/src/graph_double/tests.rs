//! The double against the core's Graph client and raw requests: Meta's rules, its error shapes,
//! the record and the scripting. The per-user rules of business-initiated calls and the
//! messages have files of their own.

use std::time::Instant;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::*;
use bridge::ids::PhoneNumber;
use bridge::whatsapp::graph::{GraphClient, GraphConfig, GraphError};

mod bic;
mod messaging;

const WAIT: Duration = Duration::from_secs(5);

use testkit::fixtures::{META_ANSWER as ANSWER, meta_offer as offer};

fn bic_offer() -> String {
    ANSWER.replace("a=setup:active", "a=setup:actpass")
}

fn call() -> CallId {
    CallId::new(
        "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==",
    )
}

async fn double() -> GraphDouble {
    double_with(GraphDoubleConfig::default()).await
}

async fn double_with(config: GraphDoubleConfig) -> GraphDouble {
    GraphDouble::start(config).await.unwrap()
}

fn client_with(double: &GraphDouble, token: &str, timeout: Duration) -> GraphClient {
    let config = GraphDoubleConfig::default();
    GraphClient::new(GraphConfig {
        base_url: double.base_url(),
        version: config.version,
        phone_number_id: config.phone_number_id,
        access_token: SecretString::from(token),
        timeout,
    })
}

fn client(double: &GraphDouble) -> GraphClient {
    client_with(double, "test-token", WAIT)
}

/// Posts a raw body with the right token to `path` and returns status and JSON body.
async fn post(double: &GraphDouble, path: &str, body: &str) -> (u16, Value) {
    post_with(double, path, Some("Bearer test-token"), body).await
}

async fn post_with(
    double: &GraphDouble,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", double.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap();
    (status, body)
}

const CALLS: &str = "/v23.0/106540352242922/calls";

fn error_code(body: &Value) -> i64 {
    body["error"]["code"].as_i64().unwrap()
}

fn details(body: &Value) -> &str {
    body["error"]["error_data"]["details"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn a_user_initiated_call_is_pre_accepted_accepted_and_terminated() {
    let double = double().await;
    assert_eq!(double.offer_for(&call()), None);
    double.register_offer(&call(), &offer());
    assert_eq!(double.offer_for(&call()), Some(offer()));
    let client = client(&double);
    client.pre_accept(&call(), ANSWER).await.unwrap();
    client
        .accept(&call(), ANSWER, Some("sess-7f3a"))
        .await
        .unwrap();
    let returned_at = Instant::now();
    client.terminate(&call()).await.unwrap();

    let actions = double.actions_for(&call());
    let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(names, ["pre_accept", "accept", "terminate"]);
    assert!(actions.iter().all(|a| a.status == 200));
    assert_eq!(actions[0].sdp.as_deref(), Some(ANSWER));
    assert_eq!(actions[1].body["biz_opaque_callback_data"], "sess-7f3a");
    assert!(actions[1].received_at <= actions[1].responded_at);
    assert!(actions[1].responded_at <= returned_at);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_with_oauth_error_190() {
    let double = double().await;
    let error = client_with(&double, "wrong", WAIT)
        .terminate(&call())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Api {
                status: 401,
                code: 190,
                ..
            }
        ),
        "{error:?}"
    );

    let body = r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate"}"#;
    let (status, response) = post_with(&double, CALLS, None, body).await;
    assert_eq!(status, 401);
    assert_eq!(response["error"]["type"], "OAuthException");
    assert_eq!(error_code(&response), 190);
    assert!(response["error"]["fbtrace_id"].is_string());
    let (status, _) = post_with(&double, CALLS, Some("Basic test-token"), body).await;
    assert_eq!(status, 401);
    assert!(double.actions().iter().all(|a| a.status == 401));
}

#[tokio::test]
async fn wrong_paths_are_refused_in_metas_shape() {
    let double = double().await;
    let body = r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate"}"#;
    let (status, response) = post(&double, "/v19.0/106540352242922/calls", body).await;
    assert_eq!((status, error_code(&response)), (400, 2500));
    let (status, response) = post(&double, "/v23.0/999/calls", body).await;
    assert_eq!((status, error_code(&response)), (400, 100));
    assert_eq!(response["error"]["error_subcode"], 33);
    let (status, response) = post(&double, "/v23.0/106540352242922/media", body).await;
    assert_eq!((status, error_code(&response)), (404, 2500));
    let response = reqwest::Client::new()
        .get(format!("{}{CALLS}", double.base_url()))
        .bearer_auth("test-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn malformed_bodies_get_invalid_parameter() {
    let double = double().await;
    let cases = [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X"}"#,
            "action",
        ),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"hold"}"#,
            "unknown action",
        ),
        (
            r#"{"call_id":"wacid.X","action":"terminate"}"#,
            "messaging_product",
        ),
        (
            r#"{"messaging_product":"sms","call_id":"wacid.X","action":"terminate"}"#,
            "messaging_product",
        ),
        (
            r#"{"messaging_product":"whatsapp","action":"terminate"}"#,
            "call_id",
        ),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate","to":"447700900123"}"#,
            "unexpected parameter \"to\"",
        ),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"pre_accept"}"#,
            "session is required",
        ),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"pre_accept","session":{"sdp_type":"answer","sdp":{"sdp":"v=0"}}}"#,
            "session.sdp",
        ),
        (
            r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"reject","connection":{"webrtc":{"sdp":"v=0"}}}"#,
            "unexpected parameter \"connection\"",
        ),
    ];
    for (body, needle) in cases {
        let (status, response) = post(&double, CALLS, body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error_code(&response), 100, "{body}");
        assert_eq!(response["error"]["message"], "(#100) Invalid parameter");
        assert!(details(&response).contains(needle), "{body}: {response}");
    }
}

#[tokio::test]
async fn callback_data_longer_than_512_characters_is_refused() {
    let double = double().await;
    let client = client(&double);
    let long = "é".repeat(513);
    let error = client
        .accept(&call(), ANSWER, Some(&long))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(100));
    client
        .accept(&call(), ANSWER, Some(&"é".repeat(512)))
        .await
        .unwrap();
}

#[tokio::test]
async fn answers_must_be_answers() {
    let double = double().await;
    let body = json!({
        "messaging_product": "whatsapp",
        "call_id": call().as_str(),
        "action": "pre_accept",
        "session": { "sdp_type": "offer", "sdp": ANSWER },
    });
    let (status, response) = post(&double, CALLS, &body.to_string()).await;
    assert_eq!((status, error_code(&response)), (400, 138_008));
    assert!(details(&response).contains("sdp_type"), "{response}");
}

#[tokio::test]
async fn answers_are_validated_against_a_registered_offer() {
    let double = double().await;
    let client = client(&double);
    let bad = ANSWER
        .replace("a=setup:active", "a=setup:passive")
        .replace("a=mid:audio", "a=mid:0");

    // Without a known offer only the shape of the request is checked.
    let unknown = CallId::new("wacid.UNKNOWN");
    client.pre_accept(&unknown, &bad).await.unwrap();

    double.register_offer(&call(), &offer());
    let error = client.pre_accept(&call(), &bad).await.unwrap_err();
    let GraphError::Api {
        status,
        code,
        details,
        ..
    } = &error
    else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!((*status, *code), (400, 138_008));
    let details = details.as_deref().unwrap_or("");
    assert!(details.contains("a=setup must be active"), "{details}");
    assert!(details.contains("a=mid"), "{details}");
    let error = client.accept(&call(), &bad, None).await.unwrap_err();
    assert_eq!(error.code(), Some(138_008));
}

#[tokio::test]
async fn accept_must_repeat_the_pre_accept_sdp_byte_for_byte() {
    let double = double().await;
    double.register_offer(&call(), &offer());
    let client = client(&double);
    client.pre_accept(&call(), ANSWER).await.unwrap();
    let other = ANSWER.replace("2859301122", "2859301123");
    let error = client.accept(&call(), &other, None).await.unwrap_err();
    let GraphError::Api { code, details, .. } = &error else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!(*code, 100);
    assert!(details.as_deref().unwrap_or("").contains("pre_accept"));
    client.accept(&call(), ANSWER, None).await.unwrap();
}

#[tokio::test]
async fn connect_assigns_new_call_ids() {
    let double = double().await;
    let client = client(&double);
    let user = PhoneNumber::new("447700900123");
    let first = client
        .connect(&user, &bic_offer(), Some("job-42"))
        .await
        .unwrap();
    // Another user: one live call per user.
    let other = PhoneNumber::new("447700900124");
    let second = client.connect(&other, &bic_offer(), None).await.unwrap();
    assert_eq!(first, CallId::new("wacid.SIM1"));
    assert_eq!(second, CallId::new("wacid.SIM2"));
    let recorded = double.actions_for(&first);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].action, "connect");
    assert_eq!(recorded[0].body["to"], "447700900123");

    let (status, response) = post(
        &double,
        CALLS,
        &json!({
            "messaging_product": "whatsapp",
            "to": "+447700900125",
            "action": "connect",
            "session": { "sdp_type": "offer", "sdp": bic_offer() },
        })
        .to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        response,
        json!({ "messaging_product": "whatsapp", "calls": [{ "id": "wacid.SIM3" }] })
    );
}

#[tokio::test]
async fn connect_refuses_bad_offers_and_missing_recipients() {
    let double = double().await;
    let client = client(&double);
    let user = PhoneNumber::new("447700900123");
    let error = client.connect(&user, ANSWER, None).await.unwrap_err();
    let GraphError::Api { code, details, .. } = &error else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!(*code, 138_008);
    assert!(details.as_deref().unwrap_or("").contains("actpass"));

    let body = json!({
        "messaging_product": "whatsapp",
        "action": "connect",
        "session": { "sdp_type": "offer", "sdp": bic_offer() },
    });
    let (status, response) = post(&double, CALLS, &body.to_string()).await;
    assert_eq!((status, error_code(&response)), (400, 100));
    assert!(double.actions().iter().all(|a| a.call_id.is_none()));
}

#[tokio::test]
async fn success_bodies_are_metas() {
    let double = double().await;
    let body = json!({ "messaging_product": "whatsapp", "call_id": "wacid.X", "action": "reject" });
    let (status, response) = post(&double, CALLS, &body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        response,
        json!({ "messaging_product": "whatsapp", "success": true })
    );
}

#[tokio::test]
async fn scripted_failures_are_served_then_stop() {
    let double = double().await;
    let client = client(&double);
    double.fail_next("terminate", 2, 503, 138_004);
    client.terminate(&call()).await.unwrap();
    let statuses: Vec<u16> = double
        .actions_for(&call())
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);

    double.fail_next("connect", 1, 401, 138_006);
    let user = PhoneNumber::new("447700900123");
    let error = client.connect(&user, &bic_offer(), None).await.unwrap_err();
    let GraphError::Api {
        status,
        code,
        message,
        fbtrace_id,
        ..
    } = &error
    else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!((*status, *code), (401, 138_006));
    assert_eq!(
        message,
        "(#138006) No approved call permission from the recipient"
    );
    assert!(fbtrace_id.is_some());
    client.connect(&user, &bic_offer(), None).await.unwrap();
}

#[tokio::test]
async fn delayed_answers_make_the_client_time_out() {
    let double = double().await;
    double.set_delay("connect", Duration::from_secs(3));
    let impatient = client_with(&double, "test-token", Duration::from_millis(100));
    let user = PhoneNumber::new("447700900123");
    let error = impatient
        .connect(&user, &bic_offer(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Timeout), "{error:?}");
}

#[tokio::test]
async fn delays_hold_the_answer_back() {
    let double = double().await;
    let delay = Duration::from_millis(50);
    double.set_delay("reject", delay);
    client(&double).reject(&call()).await.unwrap();
    let recorded = double.wait_for(&call(), "reject", WAIT).await.unwrap();
    assert!(recorded.responded_at - recorded.received_at >= delay);
}

#[tokio::test]
async fn wait_for_sees_past_and_future_actions_and_gives_up_on_time() {
    let double = double().await;
    let client = client(&double);
    client.reject(&call()).await.unwrap();
    let past = double.wait_for(&call(), "reject", WAIT).await.unwrap();
    assert_eq!(past.status, 200);

    let waiter = {
        let double = double.clone();
        tokio::spawn(async move { double.wait_for(&call(), "terminate", WAIT).await })
    };
    // The waiter may subscribe before or after the request: both must work.
    client.terminate(&call()).await.unwrap();
    let future = waiter.await.unwrap().unwrap();
    assert_eq!(future.action, "terminate");

    let never = double
        .wait_for(&call(), "accept", Duration::from_millis(20))
        .await;
    assert!(never.is_none());
}

#[tokio::test]
async fn subscribers_see_every_answered_action() {
    let double = double().await;
    let mut rx = double.subscribe();
    let client = client(&double);
    client.reject(&call()).await.unwrap();
    client_with(&double, "wrong", WAIT)
        .reject(&call())
        .await
        .unwrap_err();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.action.as_str(), first.status), ("reject", 200));
    assert_eq!((second.action.as_str(), second.status), ("reject", 401));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let double = double().await;
    let base_url = double.base_url();
    let stopped = double.handle.stopped.clone();
    double.shutdown();
    tokio::time::timeout(WAIT, stopped.cancelled())
        .await
        .unwrap();
    assert!(reqwest::Client::new().post(base_url).send().await.is_err());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let double = double().await;
    let clone = double.clone();
    let stopped = double.handle.stopped.clone();
    drop(double);
    assert!(!stopped.is_cancelled());
    client(&clone).reject(&call()).await.unwrap();
    drop(clone);
    tokio::time::timeout(WAIT, stopped.cancelled())
        .await
        .unwrap();
}
