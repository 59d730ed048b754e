//! A strict double of Meta's Graph API for one business number (spec §5, §8.2, §8.6, §9, §10,
//! §11): the `/calls` actions, `/messages` and `/call_permissions`.
//!
//! It refuses what Meta refuses (wrong token or path, undocumented fields, SDP that breaks
//! Meta's rules, an `accept` whose SDP differs from its `pre_accept`) with Meta's error shape,
//! records every request with the instants it was received and answered, and can be scripted to
//! fail or to answer slowly. A double more forgiving than Meta would hide bugs, so when in doubt
//! it refuses.
//!
//! For business-initiated calls it keeps Meta's state per user (`users`): the call permission,
//! the connected calls of the last 24 h, unanswered calls in a row, permission requests and the
//! customer-service window, and enforces it on `connect` and on messages. What only the user's
//! phone knows (picked up, declined, wrote a message) is reported to it by the callee
//! (`note_call_answered`, `note_call_unanswered`, `note_user_message`, …). Its clock is the
//! wall clock, and can be moved ahead ([`GraphDouble::advance_clock`]) to reach expiries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use bridge::ids::{CallId, PhoneNumber};
use bridge::whatsapp::permissions::PermissionStatus;

use self::state::{DoubleState, Inner};

pub use self::records::{RecordedAction, RecordedMessage, RecordedPermissionRead};
pub use self::state::GraphDoubleConfig;
pub use self::users::UserState;

mod calls;
mod messages;
mod meta_error;
mod permissions;
mod records;
mod state;
#[cfg(test)]
mod tests;
mod users;

/// Handle to a running double. Clones share it; the server stops when the last handle is dropped
/// or on [`GraphDouble::shutdown`].
#[derive(Clone)]
pub struct GraphDouble {
    handle: Arc<Handle>,
}

struct Handle {
    state: Arc<DoubleState>,
    addr: SocketAddr,
    /// Cancelled to stop the server (shutdown or last handle dropped).
    stop: CancellationToken,
    /// Cancelled by the server task once it has stopped serving.
    stopped: CancellationToken,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Capacity of the action and message broadcasts: a subscriber that falls this far behind sees
/// `Lagged` (and the waits below then look in the record).
const ACTION_CHANNEL_CAPACITY: usize = 1024;

impl GraphDouble {
    /// Starts the double on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: GraphDoubleConfig) -> std::io::Result<GraphDouble> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the double on a given address (a bridge in another process was told where it is).
    pub async fn start_on(
        config: GraphDoubleConfig,
        addr: SocketAddr,
    ) -> std::io::Result<GraphDouble> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (actions_tx, _) = broadcast::channel(ACTION_CHANNEL_CAPACITY);
        let (messages_tx, _) = broadcast::channel(ACTION_CHANNEL_CAPACITY);
        let state = Arc::new(DoubleState {
            inner: Mutex::new(Inner::new(&config)),
            config,
            actions_tx,
            messages_tx,
        });
        let router = Router::new()
            .route("/{version}/{phone_number_id}/calls", any(calls::calls))
            .route(
                "/{version}/{phone_number_id}/messages",
                any(messages::messages),
            )
            .route(
                "/{version}/{phone_number_id}/call_permissions",
                any(permissions::call_permissions),
            )
            .fallback(calls::unknown_path)
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = CancellationToken::new();
        let server =
            axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
        let done = stopped.clone();
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "Graph API double stopped with an error");
            }
            done.cancel();
        });
        tracing::info!(%addr, "Graph API double listening");
        Ok(GraphDouble {
            handle: Arc::new(Handle {
                state,
                addr,
                stop,
                stopped,
            }),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as the Graph client's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// Every request so far, in the order they were answered.
    pub fn actions(&self) -> Vec<RecordedAction> {
        self.handle.state.inner.lock().actions.clone()
    }

    pub fn actions_for(&self, call_id: &CallId) -> Vec<RecordedAction> {
        self.handle
            .state
            .inner
            .lock()
            .actions
            .iter()
            .filter(|a| a.call_id.as_ref() == Some(call_id))
            .cloned()
            .collect()
    }

    /// Every action once answered, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RecordedAction> {
        self.handle.state.actions_tx.subscribe()
    }

    /// Waits (with timeout) until an action with that name for that call has been answered; also returns one already recorded.
    ///
    /// Returns the first such action, whatever its status.
    pub async fn wait_for(
        &self,
        call_id: &CallId,
        action: &str,
        timeout: Duration,
    ) -> Option<RecordedAction> {
        let matches =
            |a: &RecordedAction| a.action == action && a.call_id.as_ref() == Some(call_id);
        // Subscribe before looking at the record, so nothing answered in between is missed.
        let rx = self.subscribe();
        wait_recorded(rx, || self.actions(), matches, timeout).await
    }

    /// Meta's clock now: the wall clock, plus whatever [`GraphDouble::advance_clock`] added.
    pub fn now(&self) -> DateTime<Utc> {
        self.handle.state.inner.lock().now()
    }

    /// Moves Meta's clock ahead (permission expiry, the 24-hour window and the rolling limits
    /// are read against it), so tests reach tomorrow without waiting for it.
    pub fn advance_clock(&self, by: Duration) {
        let by = TimeDelta::from_std(by).expect("a test advances the clock by a sane duration");
        self.handle.state.inner.lock().clock_offset += by;
    }

    /// Scripted failures: the next `times` requests of `action` get HTTP `status` with a Meta error body carrying `code`.
    ///
    /// `action` is a call action's name, `"messages"` or `"call_permissions"`.
    pub fn fail_next(&self, action: &str, times: usize, status: u16, code: i64) {
        self.handle
            .state
            .inner
            .lock()
            .failures
            .entry(action.to_owned())
            .or_default()
            .extend(std::iter::repeat_n((status, code), times));
    }

    /// Delay every answer to `action` by `delay` (to test timeouts); `action` as for
    /// [`GraphDouble::fail_next`].
    pub fn set_delay(&self, action: &str, delay: Duration) {
        self.handle
            .state
            .inner
            .lock()
            .delays
            .insert(action.to_owned(), delay);
    }

    /// Tells the double which SDP offer Meta sent for a call, so `pre_accept` and `accept`
    /// answers are validated against it (§12.2). The phone double calls this when it sends a
    /// `connect` webhook.
    pub fn register_offer(&self, call_id: &CallId, offer_sdp: &str) {
        self.handle
            .state
            .inner
            .lock()
            .offers
            .insert(call_id.clone(), offer_sdp.to_owned());
    }

    /// The offer registered for a call with [`GraphDouble::register_offer`].
    pub fn offer_for(&self, call_id: &CallId) -> Option<String> {
        self.handle.state.inner.lock().offers.get(call_id).cloned()
    }

    /// Drops what the double keeps of a call (its recorded actions, its offer and `pre_accept`
    /// answer) and returns the actions, so a long run can keep its record bounded.
    pub fn forget_call(&self, call_id: &CallId) -> Vec<RecordedAction> {
        let mut inner = self.handle.state.inner.lock();
        inner.offers.remove(call_id);
        inner.pre_accepted.remove(call_id);
        let (forgotten, kept) = std::mem::take(&mut inner.actions)
            .into_iter()
            .partition(|a| a.call_id.as_ref() == Some(call_id));
        inner.actions = kept;
        forgotten
    }

    /// Stops accepting connections; requests in flight are still answered.
    pub fn shutdown(&self) {
        self.handle.stop.cancel();
    }

    /// Resolves once the server has stopped serving, i.e. after [`GraphDouble::shutdown`] and
    /// the requests in flight have been answered.
    pub async fn stopped(&self) {
        self.handle.stopped.cancelled().await;
    }

    // What the user's side tells Meta, and what Meta knows of a user.

    /// The user grants (or revokes) a permission; a temporary one runs 7 days from now.
    pub fn set_permission(&self, user: &PhoneNumber, status: PermissionStatus) {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.users.set_permission(user.as_str(), status, now);
    }

    /// The user's permission as Meta reports it now.
    pub fn permission_of(&self, user: &PhoneNumber) -> PermissionStatus {
        self.user(user).permission
    }

    /// Everything Meta keeps about the user, now.
    pub fn user(&self, user: &PhoneNumber) -> UserState {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.users.state(user.as_str(), now)
    }

    /// The user wrote to the business: the customer-service window opens for 24 hours.
    pub fn note_user_message(&self, user: &PhoneNumber) {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.users.user_message(user.as_str(), now);
    }

    /// The user called the business: with callback permission on, a temporary permission
    /// (§9.1 item 2).
    pub fn note_user_call(&self, user: &PhoneNumber) {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.users.user_called(user.as_str(), now);
    }

    /// The user picked up the business's call: it counts against the daily limit and resets
    /// the unanswered run and the permission-request count.
    pub fn note_call_answered(&self, user: &PhoneNumber) {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.users.call_connected(user.as_str(), now);
    }

    /// The user declined the business's call or let it ring out: the call is over, and it
    /// counts as unanswered (4 in a row revoke the permission).
    pub fn note_call_unanswered(&self, user: &PhoneNumber) {
        let mut inner = self.handle.state.inner.lock();
        let now = inner.now();
        inner.active_calls.remove(user.as_str());
        if inner.users.call_unanswered(user.as_str(), now) {
            tracing::info!(user = %user, "Graph API double: permission revoked after unanswered calls");
        }
    }

    /// A call is over (the user hung up): the user is free for the next business call.
    pub fn note_call_ended(&self, call_id: &CallId) {
        self.handle
            .state
            .inner
            .lock()
            .active_calls
            .retain(|_, active| active != call_id);
    }

    /// The live business-initiated call to the user, if any.
    pub fn active_call(&self, user: &PhoneNumber) -> Option<CallId> {
        self.handle
            .state
            .inner
            .lock()
            .active_calls
            .get(user.as_str())
            .cloned()
    }

    /// Every `call_permissions` read so far, in the order answered.
    pub fn permission_reads(&self) -> Vec<RecordedPermissionRead> {
        self.handle.state.inner.lock().permission_reads.clone()
    }

    // The messages the business sends, as the double saw them.

    /// Every message request so far, in the order answered.
    pub fn messages(&self) -> Vec<RecordedMessage> {
        self.handle.state.inner.lock().messages.clone()
    }

    /// Every message request once answered, from now on.
    pub fn subscribe_messages(&self) -> broadcast::Receiver<RecordedMessage> {
        self.handle.state.messages_tx.subscribe()
    }

    /// Waits (with timeout) for the first message request that `matches`, already recorded or
    /// still to come, whatever its status.
    pub async fn wait_for_message(
        &self,
        timeout: Duration,
        matches: impl Fn(&RecordedMessage) -> bool,
    ) -> Option<RecordedMessage> {
        // Subscribe before looking at the record, so nothing answered in between is missed.
        let rx = self.subscribe_messages();
        wait_recorded(rx, || self.messages(), matches, timeout).await
    }
}

/// The first recorded item that `matches`: one already in the record, or the next one
/// broadcast before `timeout`. `rx` must be subscribed before `recorded` is first read, so nothing
/// answered in between is missed.
async fn wait_recorded<T: Clone>(
    mut rx: broadcast::Receiver<T>,
    recorded: impl Fn() -> Vec<T>,
    matches: impl Fn(&T) -> bool,
    timeout: Duration,
) -> Option<T> {
    let find = || recorded().into_iter().find(|item| matches(item));
    if let Some(found) = find() {
        return Some(found);
    }
    tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(item) if matches(&item) => return Some(item),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(found) = find() {
                        return Some(found);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
