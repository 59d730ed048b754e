//! The user's phone for business-initiated calls: plays Meta and the user's WhatsApp app toward
//! the bridge for every call the bridge places through the Graph double, and for every
//! call-permission request it sends.
//!
//! For each successful `connect` at the double the callee answers the bridge's offer and, as the
//! user was told to (per number, [`CalleeBehaviour`]), picks up (`connect` webhook with the
//! answer, `RINGING`, `ACCEPTED`, media), declines (`connect`, `RINGING`, `REJECTED`, an
//! unanswered `terminate`) or lets it ring out (`connect`, `RINGING`, an unanswered `terminate`
//! after the ring). Meta's side of what only the phone knows is reported to the double (answered
//! or unanswered, which its per-user rules count). A permission request is accepted, rejected
//! or ignored ([`PermissionAnswer`]) with the §4.6 `messages` webhook, and the user can write
//! a text ([`Callee::user_writes`]), which opens the customer-service window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::graph_double::{GraphDouble, RecordedAction, RecordedMessage};
use crate::phone::{PhoneCall, PhoneSettings, WebhookReply, post_webhook, unix_now};
use crate::webhooks::{self, PermissionReply};
use bridge::ids::{CallId, PhoneNumber};
use bridge::media::peer::{MediaPeer, PeerProfile};
use bridge::whatsapp::permissions::PermissionStatus;

/// The profile name the callee's webhooks carry.
const USER_NAME: &str = "Callee";

/// What the user does when the business calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalleeBehaviour {
    /// Picks up at once.
    Answer,
    /// Declines while it rings.
    Decline,
    /// Lets it ring for `ring`, after which Meta gives up.
    NoAnswer { ring: Duration },
}

/// What the user does with a call-permission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermissionAnswer {
    /// Grants a temporary permission (7 days).
    Accept,
    /// Declines to grant one.
    Reject,
    /// Never answers.
    Ignore,
}

/// A business-initiated call the user picked up.
pub struct AnsweredCall {
    pub call_id: CallId,
    pub user: PhoneNumber,
    /// The phone's side: its recording holds what the bridge sent.
    pub call: PhoneCall,
}

/// One webhook the callee sent the bridge for a call, and the bridge's HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// `connect`, a status (`RINGING`, `ACCEPTED`, `REJECTED`) or `terminate`.
    pub kind: String,
    pub status: u16,
}

/// A permission reply the callee sent the bridge.
#[derive(Clone, Debug)]
pub struct SentReply {
    pub user: PhoneNumber,
    /// The request's message id (the reply's `context.id`).
    pub request_id: String,
    pub accepted: bool,
    pub reply: WebhookReply,
}

/// The phones of every user the bridge calls in a test or demo. Dropping it stops them.
pub struct Callee {
    shared: Arc<Shared>,
    answered: tokio::sync::Mutex<mpsc::UnboundedReceiver<AnsweredCall>>,
    /// Stops the watcher and the calls in play when the callee is dropped.
    _stop: DropGuard,
}

/// What the watcher, the calls in play and the handle share.
struct Shared {
    graph: GraphDouble,
    settings: PhoneSettings,
    behaviours: Mutex<HashMap<PhoneNumber, CalleeBehaviour>>,
    answers: Mutex<HashMap<PhoneNumber, PermissionAnswer>>,
    /// Calls and requests already taken up (a rescan after a lagged broadcast sees them again).
    handled: Mutex<HashSet<String>>,
    /// The webhooks sent per call, in order.
    sent: Mutex<HashMap<CallId, Vec<Sent>>>,
    /// Calls whose flow has finished (picked up, or declined or rung out and terminated).
    finished: Mutex<HashSet<CallId>>,
    /// Rings to cut short when the bridge terminates the call first.
    ringing: Mutex<HashMap<CallId, CancellationToken>>,
    replies: Mutex<Vec<SentReply>>,
    /// Notified whenever `sent`, `finished` or `replies` change.
    changed: Notify,
    answered_tx: mpsc::UnboundedSender<AnsweredCall>,
    /// Counter for the ids of the user's messages.
    messages: AtomicU64,
    stop: CancellationToken,
}

impl Callee {
    /// Watches the double's `connect` actions and plays Meta + the user's app toward the bridge at `settings.bridge_url`.
    pub fn start(graph: &GraphDouble, settings: PhoneSettings) -> Callee {
        // Subscribed before returning: every call placed after `start` is seen.
        let actions = graph.subscribe();
        let messages = graph.subscribe_messages();
        let stop = CancellationToken::new();
        let (answered_tx, answered_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            graph: graph.clone(),
            settings,
            behaviours: Mutex::default(),
            answers: Mutex::default(),
            handled: Mutex::default(),
            sent: Mutex::default(),
            finished: Mutex::default(),
            ringing: Mutex::default(),
            replies: Mutex::default(),
            changed: Notify::new(),
            answered_tx,
            messages: AtomicU64::new(0),
            stop: stop.clone(),
        });
        tokio::spawn(watch(shared.clone(), actions, messages));
        Callee {
            shared,
            answered: tokio::sync::Mutex::new(answered_rx),
            _stop: stop.drop_guard(),
        }
    }

    pub fn set_behaviour(&self, user: &PhoneNumber, behaviour: CalleeBehaviour) {
        self.shared
            .behaviours
            .lock()
            .insert(user.clone(), behaviour);
    }

    pub fn set_permission_answer(&self, user: &PhoneNumber, answer: PermissionAnswer) {
        self.shared.answers.lock().insert(user.clone(), answer);
    }

    /// Calls picked up so far (call id, user, the PhoneCall with its Recording of what the bridge sent).
    pub async fn next_answered(&self, timeout: Duration) -> Option<AnsweredCall> {
        let mut answered = self.answered.lock().await;
        tokio::time::timeout(timeout, answered.recv())
            .await
            .ok()
            .flatten()
    }

    /// The user writes a text message to the business: messages webhook to the bridge + window opened in the double.
    pub async fn user_writes(&self, user: &PhoneNumber, text: &str) -> anyhow::Result<()> {
        let shared = &self.shared;
        shared.graph.note_user_message(user);
        let body = webhooks::text_message(
            &shared.settings.line,
            user,
            USER_NAME,
            &shared.message_id(),
            text,
            unix_now(),
        );
        let reply = shared.post(body).await?;
        anyhow::ensure!(
            reply.status == 200,
            "the bridge answered the message webhook with {}",
            reply.status
        );
        Ok(())
    }

    /// The webhooks sent so far for a call, in order.
    pub fn sent(&self, call_id: &CallId) -> Vec<Sent> {
        self.shared
            .sent
            .lock()
            .get(call_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (bounded) until the callee has played the call to its end: picked up, or declined
    /// or rung out and terminated.
    pub async fn wait_finished(&self, call_id: &CallId, timeout: Duration) -> bool {
        self.shared
            .wait(timeout, |shared| shared.finished.lock().contains(call_id))
            .await
    }

    /// Waits (bounded) for the callee's reply to a permission request to `user`; returns it
    /// once the bridge has answered the webhook.
    pub async fn wait_permission_reply(
        &self,
        user: &PhoneNumber,
        timeout: Duration,
    ) -> Option<SentReply> {
        let find = |shared: &Shared| {
            shared
                .replies
                .lock()
                .iter()
                .find(|reply| &reply.user == user)
                .cloned()
        };
        let shared = &self.shared;
        shared
            .wait(timeout, |shared| find(shared).is_some())
            .await
            .then(|| find(shared))
            .flatten()
    }
}

/// Hands each placed call and each permission request to a task of its own.
async fn watch(
    shared: Arc<Shared>,
    mut actions: broadcast::Receiver<RecordedAction>,
    mut messages: broadcast::Receiver<RecordedMessage>,
) {
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            action = actions.recv() => match action {
                Ok(action) => shared.on_action(&action),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for action in shared.graph.actions() {
                        shared.on_action(&action);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = messages.recv() => match message {
                Ok(message) => shared.on_message(&message),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for message in shared.graph.messages() {
                        shared.on_message(&message);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

impl Shared {
    fn on_action(self: &Arc<Self>, action: &RecordedAction) {
        let Some(call_id) = action.call_id.clone() else {
            return;
        };
        match action.action.as_str() {
            "connect" if action.status == 200 => {}
            "terminate" => {
                // The bridge hung up first: the phone stops ringing.
                if let Some(ring) = self.ringing.lock().remove(&call_id) {
                    ring.cancel();
                }
                return;
            }
            _ => return,
        }
        if !self.handled.lock().insert(call_id.as_str().to_owned()) {
            return;
        }
        let user = PhoneNumber::new(action.body["to"].as_str().unwrap_or(""));
        let Some(offer) = action.sdp.clone() else {
            return;
        };
        let behaviour = self
            .behaviours
            .lock()
            .get(&user)
            .copied()
            .unwrap_or(CalleeBehaviour::Answer);
        let ring = CancellationToken::new();
        self.ringing.lock().insert(call_id.clone(), ring.clone());
        let shared = self.clone();
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                result = shared.play_call(&call_id, &user, &offer, behaviour, ring) => {
                    if let Err(error) = result {
                        tracing::warn!(%call_id, %error, "callee could not play the call");
                    }
                }
            }
            shared.ringing.lock().remove(&call_id);
            shared.finished.lock().insert(call_id);
            shared.changed.notify_waiters();
        });
    }

    fn on_message(self: &Arc<Self>, message: &RecordedMessage) {
        let Some(request_id) = message.id.clone() else {
            return;
        };
        if message.kind != "permission_request" {
            return;
        }
        if !self.handled.lock().insert(request_id.clone()) {
            return;
        }
        let user = message.to.clone();
        let answer = self
            .answers
            .lock()
            .get(&user)
            .copied()
            .unwrap_or(PermissionAnswer::Ignore);
        let accepted = match answer {
            PermissionAnswer::Ignore => return,
            PermissionAnswer::Accept => true,
            PermissionAnswer::Reject => false,
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let stop = shared.stop.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                result = shared.answer_request(&user, request_id, accepted) => {
                    if let Err(error) = result {
                        tracing::warn!(%user, %error, "callee could not answer the permission request");
                    }
                }
            }
        });
    }

    /// One call, as the user's behaviour has it.
    async fn play_call(
        &self,
        call_id: &CallId,
        user: &PhoneNumber,
        offer: &str,
        behaviour: CalleeBehaviour,
        ring: CancellationToken,
    ) -> anyhow::Result<()> {
        if behaviour == CalleeBehaviour::Answer {
            let call =
                PhoneCall::pick_up(self.settings.clone(), call_id.clone(), user.clone(), offer)
                    .await?;
            self.graph.note_call_answered(user);
            for (kind, status) in [
                ("connect", call.reply.status),
                ("RINGING", 200),
                ("ACCEPTED", 200),
            ] {
                self.record(call_id, kind, status);
            }
            let answered = AnsweredCall {
                call_id: call_id.clone(),
                user: user.clone(),
                call,
            };
            // Nobody waiting for it any more is fine: the call then simply ends with the callee.
            let _ = self.answered_tx.send(answered);
            return Ok(());
        }
        // Media is set up at dial time (§4.3, §13.3): Meta answers the offer before the user
        // decides.
        let mut peer =
            MediaPeer::new(&self.settings.peer, PeerProfile::SimulatedPhone, None).await?;
        let result = self
            .ring_and_give_up(call_id, user, &mut peer, offer, behaviour, ring)
            .await;
        peer.close().await;
        result
    }

    /// `connect` with the answer, `RINGING`, then `REJECTED` (declined) or the end of the ring,
    /// then an unanswered `terminate`.
    async fn ring_and_give_up(
        &self,
        call_id: &CallId,
        user: &PhoneNumber,
        peer: &mut MediaPeer,
        offer: &str,
        behaviour: CalleeBehaviour,
        ring: CancellationToken,
    ) -> anyhow::Result<()> {
        let line = &self.settings.line;
        let answer = peer.answer(offer).await?;
        let connect = webhooks::connect_answer(line, call_id, user, &answer, unix_now());
        self.post_for(call_id, "connect", connect).await?;
        let ringing = webhooks::status(line, call_id, user, "RINGING", unix_now());
        self.post_for(call_id, "RINGING", ringing).await?;
        match behaviour {
            CalleeBehaviour::Decline => {
                let rejected = webhooks::status(line, call_id, user, "REJECTED", unix_now());
                self.post_for(call_id, "REJECTED", rejected).await?;
            }
            CalleeBehaviour::NoAnswer { ring: length } => {
                // The phone rings for its time, unless the bridge gives up first.
                tokio::select! {
                    () = tokio::time::sleep(length) => {}
                    () = ring.cancelled() => {}
                }
            }
            CalleeBehaviour::Answer => {}
        }
        // Meta counts the call before it tells the bridge it is over.
        self.graph.note_call_unanswered(user);
        let terminate = webhooks::bic_terminate(line, call_id, user, unix_now(), None);
        self.post_for(call_id, "terminate", terminate).await
    }

    /// The user answers a permission request: the double learns the grant (and the window the
    /// reply opens) before the bridge reads the webhook.
    async fn answer_request(
        &self,
        user: &PhoneNumber,
        request_id: String,
        accepted: bool,
    ) -> anyhow::Result<()> {
        if accepted {
            self.graph.set_permission(user, PermissionStatus::Temporary);
        }
        // A reply is a message from the user: it opens the customer-service window.
        self.graph.note_user_message(user);
        // The grant's end as Meta knows it (its clock may run ahead of ours).
        let expires_at = self
            .graph
            .user(user)
            .expires_at
            .and_then(|at| u64::try_from(at.timestamp()).ok());
        let reply = PermissionReply {
            message_id: self.message_id(),
            context_id: Some(request_id.clone()),
            accepted,
            permanent: false,
            expires_at: expires_at.filter(|_| accepted),
            source: "user_action".to_owned(),
        };
        let timestamp = unix_now();
        let body =
            webhooks::permission_reply(&self.settings.line, user, USER_NAME, &reply, timestamp);
        let reply = self.post(body).await?;
        self.replies.lock().push(SentReply {
            user: user.clone(),
            request_id,
            accepted,
            reply,
        });
        self.changed.notify_waiters();
        Ok(())
    }

    async fn post(&self, body: String) -> anyhow::Result<WebhookReply> {
        let settings = &self.settings;
        post_webhook(
            &settings.http,
            &settings.bridge_url,
            &settings.app_secret,
            body,
        )
        .await
    }

    /// Posts a call's webhook and records it with the bridge's answer.
    async fn post_for(&self, call_id: &CallId, kind: &str, body: String) -> anyhow::Result<()> {
        let reply = self.post(body).await?;
        self.record(call_id, kind, reply.status);
        anyhow::ensure!(
            reply.status == 200,
            "the bridge answered {kind} with {}",
            reply.status
        );
        Ok(())
    }

    fn record(&self, call_id: &CallId, kind: &str, status: u16) {
        self.sent
            .lock()
            .entry(call_id.clone())
            .or_default()
            .push(Sent {
                kind: kind.to_owned(),
                status,
            });
        self.changed.notify_waiters();
    }

    /// A fresh id for a message from the user.
    fn message_id(&self) -> String {
        let n = self.messages.fetch_add(1, Ordering::Relaxed) + 1;
        format!("wamid.CALLEE{n}")
    }

    /// Waits until `condition` holds, re-checking at every change (bounded).
    async fn wait(&self, timeout: Duration, condition: impl Fn(&Shared) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(self);
            }
        }
    }
}
