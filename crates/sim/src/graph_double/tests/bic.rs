//! Business-initiated calls under Meta's per-user rules, through the core's client: the
//! permission read (§9.2), `connect` refused without permission, over the daily limit or to a
//! busy user, unanswered calls revoking the permission (§7.2, §10).

use bridge::whatsapp::graph::GraphErrorKind;
use bridge::whatsapp::permissions::{CallPermission, PermissionStatus};
use chrono::TimeDelta;

use super::*;

const USER: &str = "447700900123";
const PERMISSIONS: &str = "/v23.0/106540352242922/call_permissions";

fn user() -> PhoneNumber {
    PhoneNumber::new(USER)
}

/// `a` and `b` are the same instant to within the seconds Meta writes and the test takes.
fn about(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> bool {
    a.is_some_and(|a| (a - b).num_seconds().abs() <= 2)
}

async fn get(double: &GraphDouble, path_and_query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path_and_query}", double.base_url()))
        .bearer_auth("test-token")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_new_user_reads_as_a_temporary_permission_in_metas_shape() {
    let double = double().await;
    let now = double.now();
    let permission = client(&double).call_permission(&user()).await.unwrap();
    assert_eq!(permission.status, PermissionStatus::Temporary);
    assert!(about(permission.expires_at, now + TimeDelta::days(7)));
    assert!(permission.can_start_call);
    assert!(permission.can_request_permission);
    assert_eq!(permission.start_call_resets_at, None);

    let (status, body) = get(&double, &format!("{PERMISSIONS}?user_wa_id={USER}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["permission"]["status"], "temporary");
    assert!(body["permission"]["expiration_time"].is_i64());
    let actions = body["actions"].as_array().unwrap();
    assert_eq!(actions[0]["action_name"], "send_call_permission_request");
    assert_eq!(
        actions[0]["limits"],
        json!([
            { "time_period": "PT24H", "max_allowed": 1, "current_usage": 0 },
            { "time_period": "P7D", "max_allowed": 2, "current_usage": 0 },
        ])
    );
    assert_eq!(actions[1]["action_name"], "start_call");
    assert_eq!(
        actions[1]["limits"],
        json!([{ "time_period": "PT24H", "max_allowed": 100, "current_usage": 0 }])
    );
    let reads = double.permission_reads();
    assert_eq!(reads.len(), 2);
    assert!(reads.iter().all(|r| r.user == USER && r.status == 200));
}

#[tokio::test]
async fn a_user_without_permission_reads_so_and_cannot_be_called() {
    let double = double().await;
    double.set_permission(&user(), PermissionStatus::NoPermission);
    let client = client(&double);
    assert_eq!(
        client.call_permission(&user()).await.unwrap(),
        CallPermission {
            status: PermissionStatus::NoPermission,
            expires_at: None,
            can_start_call: false,
            can_request_permission: true,
            start_call_resets_at: None,
        }
    );
    let error = client
        .connect(&user(), &bic_offer(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Api {
                status: 401,
                code: 138_006,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), Some(GraphErrorKind::NoCallPermission));
    assert_eq!(double.active_call(&user()), None);

    // A permanent grant has no expiry and cannot be asked for again.
    double.set_permission(&user(), PermissionStatus::Permanent);
    let permission = client.call_permission(&user()).await.unwrap();
    assert_eq!(permission.status, PermissionStatus::Permanent);
    assert_eq!(permission.expires_at, None);
    assert!(permission.can_start_call && !permission.can_request_permission);
    client.connect(&user(), &bic_offer(), None).await.unwrap();
}

#[tokio::test]
async fn an_exhausted_call_quota_reads_false_with_its_reset_and_refuses_connect() {
    let double = double_with(GraphDoubleConfig {
        calls_per_day: 2,
        ..GraphDoubleConfig::default()
    })
    .await;
    let client = client(&double);
    let first_connected = double.now();
    for _ in 0..2 {
        let call_id = client.connect(&user(), &bic_offer(), None).await.unwrap();
        double.note_call_answered(&user());
        client.terminate(&call_id).await.unwrap();
    }
    let permission = client.call_permission(&user()).await.unwrap();
    assert_eq!(permission.status, PermissionStatus::Temporary);
    assert!(!permission.can_start_call);
    assert!(about(
        permission.start_call_resets_at,
        first_connected + TimeDelta::hours(24)
    ));
    let error = client
        .connect(&user(), &bic_offer(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(138_012));
    assert_eq!(error.kind(), Some(GraphErrorKind::CallLimitReached));
    assert_eq!(double.user(&user()).connected_calls, 2);

    // A rolling day later the quota is back.
    double.advance_clock(Duration::from_secs(24 * 3600));
    let permission = client.call_permission(&user()).await.unwrap();
    assert!(permission.can_start_call);
    assert_eq!(permission.start_call_resets_at, None);
}

#[tokio::test]
async fn a_second_call_to_a_busy_user_is_refused_until_the_first_is_over() {
    let double = double().await;
    let client = client(&double);
    let first = client.connect(&user(), &bic_offer(), None).await.unwrap();
    assert_eq!(double.active_call(&user()), Some(first.clone()));
    let error = client
        .connect(&user(), &bic_offer(), None)
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.kind()),
        (Some(138_003), Some(GraphErrorKind::CallAlreadyActive))
    );
    // Over when the business terminates it…
    client.terminate(&first).await.unwrap();
    let second = client.connect(&user(), &bic_offer(), None).await.unwrap();
    // …when the user lets it ring out…
    double.note_call_unanswered(&user());
    let third = client.connect(&user(), &bic_offer(), None).await.unwrap();
    // …or when the user hangs up.
    double.note_call_ended(&third);
    assert_eq!(double.active_call(&user()), None);
    client.connect(&user(), &bic_offer(), None).await.unwrap();
    assert_ne!(second, third);
}

#[tokio::test]
async fn four_unanswered_calls_in_a_row_revoke_the_permission() {
    let double = double().await;
    let client = client(&double);
    for n in 1..=4 {
        client.connect(&user(), &bic_offer(), None).await.unwrap();
        double.note_call_unanswered(&user());
        let expected = if n < 4 {
            // Two in a row only nudge the user: nothing the business can see.
            PermissionStatus::Temporary
        } else {
            PermissionStatus::NoPermission
        };
        assert_eq!(double.permission_of(&user()), expected, "after {n}");
    }
    let error = client
        .connect(&user(), &bic_offer(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(138_006));
    let permission = client.call_permission(&user()).await.unwrap();
    assert_eq!(permission.status, PermissionStatus::NoPermission);
    assert!(!permission.can_start_call);
}

#[tokio::test]
async fn an_answered_call_ends_the_run_of_unanswered_ones() {
    let double = double().await;
    let client = client(&double);
    for answered in [false, false, false, true, false, false, false] {
        let call_id = client.connect(&user(), &bic_offer(), None).await.unwrap();
        if answered {
            double.note_call_answered(&user());
            client.terminate(&call_id).await.unwrap();
        } else {
            double.note_call_unanswered(&user());
        }
    }
    assert_eq!(double.user(&user()).unanswered_in_a_row, 3);
    assert_eq!(double.permission_of(&user()), PermissionStatus::Temporary);
}

#[tokio::test]
async fn a_temporary_permission_lapses_after_seven_days_and_a_user_call_grants_a_new_one() {
    let double = double().await;
    let client = client(&double);
    assert_eq!(double.permission_of(&user()), PermissionStatus::Temporary);
    double.advance_clock(Duration::from_secs(7 * 24 * 3600));
    assert_eq!(
        client.call_permission(&user()).await.unwrap().status,
        PermissionStatus::NoPermission
    );
    let error = client
        .connect(&user(), &bic_offer(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(138_006));

    // With callback permission on (the default), the user calling us grants 7 days.
    double.note_user_call(&user());
    let permission = client.call_permission(&user()).await.unwrap();
    assert_eq!(permission.status, PermissionStatus::Temporary);
    assert!(about(
        permission.expires_at,
        double.now() + TimeDelta::days(7)
    ));

    let off = double_with(GraphDoubleConfig {
        default_permission: PermissionStatus::NoPermission,
        callback_permission: false,
        ..GraphDoubleConfig::default()
    })
    .await;
    off.note_user_call(&user());
    assert_eq!(off.permission_of(&user()), PermissionStatus::NoPermission);
}

#[tokio::test]
async fn permission_reads_beyond_five_a_second_are_refused_with_613() {
    let double = double().await;
    let client = client(&double);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(client.call_permission(&user()).await.map(|_| ()));
    }
    // Five reads take far less than a second on loopback; the sixth is over the limit.
    assert!(outcomes[..5].iter().all(Result::is_ok), "{outcomes:?}");
    let error = outcomes[5].as_ref().unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Api {
                status: 429,
                code: 613,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), Some(GraphErrorKind::RateLimited));
    let statuses: Vec<u16> = double
        .permission_reads()
        .iter()
        .map(|read| read.status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

#[tokio::test]
async fn a_read_needs_a_user_and_a_get() {
    let double = double().await;
    let (status, body) = get(&double, PERMISSIONS).await;
    assert_eq!((status, error_code(&body)), (400, 100));
    assert!(details(&body).contains("user_wa_id"), "{body}");
    let (status, body) = get(&double, &format!("{PERMISSIONS}?recipient=US.1349")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&double, PERMISSIONS, "{}").await;
    assert_eq!((status, error_code(&body)), (400, 100));
    let (status, body) = get(
        &double,
        "/v19.0/106540352242922/call_permissions?user_wa_id=1",
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, 2500));
}
