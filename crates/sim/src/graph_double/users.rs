//! What Meta keeps per WhatsApp user for business-initiated calls and messages (§7.2, §9, §10),
//! as plain data that takes `now`: the call permission and its expiry, the connected calls of
//! the last 24 hours against their limit, unanswered calls in a row (4 revoke the permission),
//! permission requests (1 per 24 h, 2 per 7 days, counted since the last connected call) and
//! the customer-service window opened by the user's last message.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use bridge::whatsapp::permissions::PermissionStatus;

/// How long a temporary permission lasts from its grant (§9.1).
pub(super) const TEMPORARY_GRANT: TimeDelta = TimeDelta::days(7);
/// The customer-service window after the user's last message.
pub(super) const SERVICE_WINDOW: TimeDelta = TimeDelta::hours(24);
/// The period of the connected-call limit and of the shorter request limit.
const DAY: TimeDelta = TimeDelta::hours(24);
/// The period of the longer request limit.
const WEEK: TimeDelta = TimeDelta::days(7);
/// Permission requests allowed per 24 h and per 7 days (§10).
pub(super) const REQUESTS_PER_DAY: u32 = 1;
pub(super) const REQUESTS_PER_WEEK: u32 = 2;
/// Unanswered or declined calls in a row after which the user is nudged (nothing we can see).
const NUDGE_AFTER: u32 = 2;
/// Unanswered or declined calls in a row that revoke the permission (§7.2, §10).
const REVOKE_AFTER: u32 = 4;

/// The settings the rules follow.
#[derive(Clone, Debug)]
pub(super) struct Rules {
    /// The permission of a user the double has not heard of.
    pub(super) default_permission: PermissionStatus,
    /// Connected business-initiated calls per user per rolling 24 h.
    pub(super) calls_per_day: u32,
    /// A user who calls the business is granted a temporary permission (§9.1 item 2).
    pub(super) callback_permission: bool,
}

/// What Meta knows about one user, as the double exposes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserState {
    /// The permission as Meta reports it now (a lapsed temporary one reads `NoPermission`).
    pub permission: PermissionStatus,
    /// When a temporary permission lapses.
    pub expires_at: Option<DateTime<Utc>>,
    /// Connected business-initiated calls in the last 24 hours.
    pub connected_calls: u32,
    /// When the connected-call limit resets, only while it is reached.
    pub calls_reset_at: Option<DateTime<Utc>>,
    /// Unanswered or declined business-initiated calls since the last connected one.
    pub unanswered_in_a_row: u32,
    /// Permission requests sent in the last 24 hours and 7 days (since the last connected call).
    pub requests_today: u32,
    pub requests_this_week: u32,
    /// When the permission-request limit resets, only while a limit is reached.
    pub requests_reset_at: Option<DateTime<Utc>>,
    /// When the customer-service window closes; `None` when it is closed.
    pub window_closes_at: Option<DateTime<Utc>>,
}

impl UserState {
    /// A call may be placed now (permission granted and unexpired, quota left).
    pub fn can_start_call(&self) -> bool {
        self.permission.is_granted() && self.calls_reset_at.is_none()
    }

    /// A permission request may be sent now (no permanent permission, limits not reached).
    pub fn can_request_permission(&self) -> bool {
        self.permission != PermissionStatus::Permanent && self.requests_reset_at.is_none()
    }
}

/// Why Meta refuses a call or a message to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 138006: no usable permission.
    NoPermission,
    /// 138012: the connected-call limit is reached until then.
    CallLimit { resets_at: DateTime<Utc> },
    /// 131047: a free-form message outside the customer-service window.
    OutsideWindow,
    /// 138017: a permanent permission exists, asking is pointless.
    PermanentPermission,
    /// 138009: the permission-request limit is reached until then.
    RequestLimit { resets_at: DateTime<Utc> },
}

#[derive(Clone, Debug)]
struct User {
    permission: PermissionStatus,
    expires_at: Option<DateTime<Utc>>,
    /// When each connected call of the last 24 h connected.
    connected: Vec<DateTime<Utc>>,
    unanswered_in_a_row: u32,
    /// When each permission request since the last connected call was sent (a week's worth).
    requests: Vec<DateTime<Utc>>,
    last_message_at: Option<DateTime<Utc>>,
}

impl User {
    fn granted(
        status: PermissionStatus,
        now: DateTime<Utc>,
    ) -> (PermissionStatus, Option<DateTime<Utc>>) {
        let expires_at = (status == PermissionStatus::Temporary).then(|| now + TEMPORARY_GRANT);
        (status, expires_at)
    }

    /// Lapses an expired grant and forgets what no longer counts.
    fn settle(&mut self, now: DateTime<Utc>) {
        if self.expires_at.is_some_and(|at| at <= now) {
            self.permission = PermissionStatus::NoPermission;
            self.expires_at = None;
        }
        self.connected.retain(|at| now - *at < DAY);
        self.requests.retain(|at| now - *at < WEEK);
    }

    fn calls_reset_at(&self, rules: &Rules) -> Option<DateTime<Utc>> {
        let reached = self.connected.len() >= rules.calls_per_day as usize;
        // The oldest connected call leaving the window frees one call.
        reached.then(|| self.connected.iter().min().map(|at| *at + DAY))?
    }

    fn requests_within(&self, period: TimeDelta, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.requests
            .iter()
            .copied()
            .filter(|at| now - *at < period)
            .collect()
    }

    fn requests_reset_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let limits = [(DAY, REQUESTS_PER_DAY), (WEEK, REQUESTS_PER_WEEK)];
        limits
            .into_iter()
            .filter_map(|(period, max)| {
                let sent = self.requests_within(period, now);
                (sent.len() >= max as usize).then(|| sent.iter().min().map(|at| *at + period))?
            })
            .max()
    }
}

/// Every user Meta has seen, under the rules.
#[derive(Debug)]
pub(super) struct Users {
    rules: Rules,
    /// By phone number digits, or business-scoped user id.
    users: HashMap<String, User>,
}

impl Users {
    pub(super) fn new(rules: Rules) -> Self {
        Self {
            rules,
            users: HashMap::new(),
        }
    }

    /// The user, created with the default permission (granted now) on first sight.
    fn user(&mut self, key: &str, now: DateTime<Utc>) -> &mut User {
        let default = &self.rules.default_permission;
        let user = self.users.entry(key.to_owned()).or_insert_with(|| {
            let (permission, expires_at) = User::granted(default.clone(), now);
            User {
                permission,
                expires_at,
                connected: Vec::new(),
                unanswered_in_a_row: 0,
                requests: Vec::new(),
                last_message_at: None,
            }
        });
        user.settle(now);
        user
    }

    pub(super) fn state(&mut self, key: &str, now: DateTime<Utc>) -> UserState {
        let rules = self.rules.clone();
        let user = self.user(key, now);
        UserState {
            permission: user.permission.clone(),
            expires_at: user.expires_at,
            connected_calls: user.connected.len() as u32,
            calls_reset_at: user.calls_reset_at(&rules),
            unanswered_in_a_row: user.unanswered_in_a_row,
            requests_today: user.requests_within(DAY, now).len() as u32,
            requests_this_week: user.requests_within(WEEK, now).len() as u32,
            requests_reset_at: user.requests_reset_at(now),
            window_closes_at: user
                .last_message_at
                .map(|at| at + SERVICE_WINDOW)
                .filter(|closes| *closes > now),
        }
    }

    /// Grants or revokes as the user would; a temporary grant lasts 7 days from now.
    pub(super) fn set_permission(
        &mut self,
        key: &str,
        status: PermissionStatus,
        now: DateTime<Utc>,
    ) {
        let user = self.user(key, now);
        (user.permission, user.expires_at) = User::granted(status, now);
    }

    /// A business-initiated call may ring the user now.
    pub(super) fn may_start_call(&mut self, key: &str, now: DateTime<Utc>) -> Result<(), Refusal> {
        let state = self.state(key, now);
        if !state.permission.is_granted() {
            return Err(Refusal::NoPermission);
        }
        match state.calls_reset_at {
            Some(resets_at) => Err(Refusal::CallLimit { resets_at }),
            None => Ok(()),
        }
    }

    /// The user picked up a business-initiated call: it counts against the daily limit, and
    /// ends the run of unanswered calls and the permission-request count.
    pub(super) fn call_connected(&mut self, key: &str, now: DateTime<Utc>) {
        let user = self.user(key, now);
        user.connected.push(now);
        user.unanswered_in_a_row = 0;
        user.requests.clear();
    }

    /// The user declined or did not answer a business-initiated call. Returns whether that
    /// revoked the permission.
    pub(super) fn call_unanswered(&mut self, key: &str, now: DateTime<Utc>) -> bool {
        let user = self.user(key, now);
        user.unanswered_in_a_row += 1;
        if user.unanswered_in_a_row == NUDGE_AFTER {
            tracing::debug!("Graph API double: the user is nudged to review the permission");
        }
        if user.unanswered_in_a_row < REVOKE_AFTER {
            return false;
        }
        user.unanswered_in_a_row = 0;
        let revoked = user.permission.is_granted();
        user.permission = PermissionStatus::NoPermission;
        user.expires_at = None;
        revoked
    }

    /// The user wrote to the business: the customer-service window opens for 24 h.
    pub(super) fn user_message(&mut self, key: &str, now: DateTime<Utc>) {
        self.user(key, now).last_message_at = Some(now);
    }

    /// The user called the business: with callback permission on, a temporary permission is
    /// granted (a permanent one stays).
    pub(super) fn user_called(&mut self, key: &str, now: DateTime<Utc>) {
        if !self.rules.callback_permission {
            return;
        }
        let user = self.user(key, now);
        if user.permission != PermissionStatus::Permanent {
            (user.permission, user.expires_at) = User::granted(PermissionStatus::Temporary, now);
        }
    }

    /// A free-form message (text, interactive) may be sent now.
    pub(super) fn may_send_free_form(
        &mut self,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        match self.state(key, now).window_closes_at {
            Some(_) => Ok(()),
            None => Err(Refusal::OutsideWindow),
        }
    }

    /// A call-permission request may be sent now.
    pub(super) fn may_request_permission(
        &mut self,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let state = self.state(key, now);
        if state.permission == PermissionStatus::Permanent {
            return Err(Refusal::PermanentPermission);
        }
        match state.requests_reset_at {
            Some(resets_at) => Err(Refusal::RequestLimit { resets_at }),
            None => Ok(()),
        }
    }

    pub(super) fn permission_requested(&mut self, key: &str, now: DateTime<Utc>) {
        self.user(key, now).requests.push(now);
    }
}

#[cfg(test)]
mod tests;
