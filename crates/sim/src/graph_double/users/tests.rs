//! The per-user rules with synthetic time.

use super::*;

const USER: &str = "447700900123";

fn users(default_permission: PermissionStatus) -> Users {
    Users::new(Rules {
        default_permission,
        calls_per_day: 3,
        callback_permission: true,
    })
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_690_000, 0).unwrap()
}

fn hours(n: i64) -> TimeDelta {
    TimeDelta::hours(n)
}

#[test]
fn a_new_user_has_the_default_permission_and_a_temporary_one_lapses_after_seven_days() {
    let mut users = users(PermissionStatus::Temporary);
    let state = users.state(USER, t0());
    assert_eq!(state.permission, PermissionStatus::Temporary);
    assert_eq!(state.expires_at, Some(t0() + TimeDelta::days(7)));
    assert!(state.can_start_call());
    let later = t0() + TimeDelta::days(7);
    assert_eq!(
        users.state(USER, later).permission,
        PermissionStatus::NoPermission
    );
    assert_eq!(
        users.may_start_call(USER, later),
        Err(Refusal::NoPermission)
    );

    let mut denied = self::users(PermissionStatus::NoPermission);
    assert_eq!(
        denied.may_start_call(USER, t0()),
        Err(Refusal::NoPermission)
    );
    denied.set_permission(USER, PermissionStatus::Permanent, t0());
    let far = t0() + TimeDelta::days(400);
    assert_eq!(denied.may_start_call(USER, far), Ok(()));
    assert_eq!(denied.state(USER, far).expires_at, None);
}

#[test]
fn the_connected_call_limit_is_a_rolling_day() {
    let mut users = users(PermissionStatus::Permanent);
    for h in 0..3 {
        assert_eq!(users.may_start_call(USER, t0() + hours(h)), Ok(()));
        users.call_connected(USER, t0() + hours(h));
    }
    let refused = users.may_start_call(USER, t0() + hours(5));
    assert_eq!(
        refused,
        Err(Refusal::CallLimit {
            resets_at: t0() + hours(24)
        })
    );
    let state = users.state(USER, t0() + hours(5));
    assert_eq!(state.connected_calls, 3);
    assert!(!state.can_start_call());
    assert_eq!(users.may_start_call(USER, t0() + hours(24)), Ok(()));
    assert_eq!(users.state(USER, t0() + hours(24)).connected_calls, 2);
}

#[test]
fn four_unanswered_calls_in_a_row_revoke_the_permission_and_a_connected_one_resets_the_run() {
    let mut users = users(PermissionStatus::Temporary);
    for _ in 0..3 {
        assert!(!users.call_unanswered(USER, t0()));
    }
    users.call_connected(USER, t0());
    assert_eq!(users.state(USER, t0()).unanswered_in_a_row, 0);
    for n in 1..=3 {
        assert!(!users.call_unanswered(USER, t0()));
        // Two in a row nudge the user, which the business cannot see.
        assert_eq!(
            users.state(USER, t0()).permission,
            PermissionStatus::Temporary
        );
        assert_eq!(users.state(USER, t0()).unanswered_in_a_row, n);
    }
    assert!(users.call_unanswered(USER, t0()));
    assert_eq!(
        users.state(USER, t0()).permission,
        PermissionStatus::NoPermission
    );
    assert_eq!(users.may_start_call(USER, t0()), Err(Refusal::NoPermission));
}

#[test]
fn permission_requests_are_limited_per_day_and_week_until_a_call_connects() {
    let mut users = users(PermissionStatus::NoPermission);
    assert_eq!(users.may_request_permission(USER, t0()), Ok(()));
    users.permission_requested(USER, t0());
    assert_eq!(
        users.may_request_permission(USER, t0() + hours(23)),
        Err(Refusal::RequestLimit {
            resets_at: t0() + hours(24)
        })
    );
    let second = t0() + hours(24);
    assert_eq!(users.may_request_permission(USER, second), Ok(()));
    users.permission_requested(USER, second);
    // Two in seven days: the next is allowed once the first is a week old.
    let refused = users.may_request_permission(USER, t0() + hours(72));
    assert_eq!(
        refused,
        Err(Refusal::RequestLimit {
            resets_at: t0() + TimeDelta::days(7)
        })
    );
    let state = users.state(USER, t0() + hours(72));
    assert_eq!((state.requests_today, state.requests_this_week), (0, 2));
    assert!(!state.can_request_permission());
    assert_eq!(
        users.may_request_permission(USER, t0() + TimeDelta::days(7)),
        Ok(())
    );
    // A connected call resets the count.
    users.set_permission(USER, PermissionStatus::Temporary, t0() + hours(72));
    users.call_connected(USER, t0() + hours(72));
    assert_eq!(users.may_request_permission(USER, t0() + hours(72)), Ok(()));
    // Nobody asks for what is permanent.
    users.set_permission(USER, PermissionStatus::Permanent, t0() + hours(73));
    assert_eq!(
        users.may_request_permission(USER, t0() + hours(73)),
        Err(Refusal::PermanentPermission)
    );
}

#[test]
fn the_window_is_open_for_a_day_after_the_users_last_message() {
    let mut users = users(PermissionStatus::Temporary);
    assert_eq!(
        users.may_send_free_form(USER, t0()),
        Err(Refusal::OutsideWindow)
    );
    users.user_message(USER, t0());
    assert_eq!(users.may_send_free_form(USER, t0() + hours(23)), Ok(()));
    assert_eq!(
        users.state(USER, t0()).window_closes_at,
        Some(t0() + hours(24))
    );
    assert_eq!(
        users.may_send_free_form(USER, t0() + hours(24)),
        Err(Refusal::OutsideWindow)
    );
}

#[test]
fn a_user_who_calls_is_granted_a_temporary_permission_when_callback_permission_is_on() {
    let mut users = users(PermissionStatus::NoPermission);
    users.user_called(USER, t0());
    let state = users.state(USER, t0());
    assert_eq!(state.permission, PermissionStatus::Temporary);
    assert_eq!(state.expires_at, Some(t0() + TimeDelta::days(7)));
    users.set_permission(USER, PermissionStatus::Permanent, t0());
    users.user_called(USER, t0());
    assert_eq!(
        users.state(USER, t0()).permission,
        PermissionStatus::Permanent
    );

    let mut off = Users::new(Rules {
        default_permission: PermissionStatus::NoPermission,
        calls_per_day: 1,
        callback_permission: false,
    });
    off.user_called(USER, t0());
    assert_eq!(
        off.state(USER, t0()).permission,
        PermissionStatus::NoPermission
    );
}
