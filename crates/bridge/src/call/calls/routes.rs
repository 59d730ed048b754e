//! The ways in to a live call: Meta's events (`terminate`; the answer and status of a call we
//! placed), an operator's hang-up, and the same events forwarded by other replicas. An event
//! for a call live here reaches its task at once; one for a call owned by another replica is
//! forwarded to it through the fleet; one for a call nobody has is remembered.

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Calls;
use crate::call::{CallCommand, CallEnd};
use crate::fleet::{FleetEvent, Forwarded, Routed};
use crate::ids::CallId;

impl Calls {
    /// Meta ended the call (a `terminate` webhook). A call live on another replica is ended
    /// there; a call not live anywhere is remembered, so a `connect` arriving after it is not
    /// answered.
    pub async fn remote_terminated(&self, call_id: &CallId) {
        if self
            .send_local(call_id, CallCommand::RemoteTerminated)
            .is_ok()
        {
            return;
        }
        if let Some(fleet) = &self.inner.fleet
            && let Routed::Forwarded(owner) = fleet.route(call_id, &FleetEvent::Terminated).await
        {
            debug!(%call_id, %owner, "terminate forwarded to the call's replica");
            return;
        }
        debug!(%call_id, "terminate for a call not live; remembered");
        self.inner.registry.tombstone(call_id);
    }

    /// Meta's answer (`RemoteAnswer`), the callee picking up (`RemoteAccepted`) or declining
    /// (`RemoteRejected`) for a call
    /// we placed, here or on another replica. Kept for a call whose `connect` response has not
    /// come back yet: Meta's webhook can be faster than its own API response.
    pub async fn deliver(&self, call_id: &CallId, command: CallCommand) {
        let Err(command) = self.send_local(call_id, command) else {
            return;
        };
        if let Some(fleet) = &self.inner.fleet
            && let Some(event) = fleet_event(&command)
            && let Routed::Forwarded(owner) = fleet.hold_early(call_id, &event).await
        {
            debug!(%call_id, %owner, kind = event.kind(), "event forwarded to the call's replica");
            return;
        }
        if !self.inner.registry.hold_for_unknown(call_id, command) {
            debug!(%call_id, "command for an ended call ignored");
        }
    }

    /// Ends a live call, here or on another replica, for an operator; the call's task tells
    /// Meta. False when no such call is live.
    pub async fn hang_up(&self, call_id: &CallId, end: CallEnd) -> bool {
        if self.send_local(call_id, CallCommand::Hangup(end)).is_ok() {
            return true;
        }
        match &self.inner.fleet {
            Some(fleet) => matches!(
                fleet.route(call_id, &FleetEvent::Hangup).await,
                Routed::Forwarded(_)
            ),
            None => false,
        }
    }

    /// Applies, until the inbox closes, the events other replicas forwarded for calls of this
    /// one. Never forwards again: an event for a call that ended meanwhile is remembered.
    pub fn take_forwarded(&self, mut inbox: mpsc::Receiver<Forwarded>) {
        let calls = self.clone();
        tokio::spawn(async move {
            while let Some(forwarded) = inbox.recv().await {
                calls.apply(forwarded);
            }
        });
    }

    /// One forwarded event, applied here.
    pub(super) fn apply(&self, forwarded: Forwarded) {
        let call_id = &forwarded.call_id;
        let command = match forwarded.event {
            FleetEvent::Terminated => CallCommand::RemoteTerminated,
            FleetEvent::Answer { sdp } => CallCommand::RemoteAnswer(sdp),
            FleetEvent::Accepted => CallCommand::RemoteAccepted,
            FleetEvent::Rejected => CallCommand::RemoteRejected,
            FleetEvent::Hangup => CallCommand::Hangup(CallEnd::AdminHangup),
        };
        let Err(command) = self.send_local(call_id, command) else {
            return;
        };
        match command {
            CallCommand::RemoteAnswer(_)
            | CallCommand::RemoteAccepted
            | CallCommand::RemoteRejected => {
                self.inner.registry.hold_for_unknown(call_id, command);
            }
            CallCommand::RemoteTerminated => self.inner.registry.tombstone(call_id),
            CallCommand::Hangup(_) => debug!(%call_id, "forwarded hang-up for a call not live"),
        }
    }

    /// Hands `command` to the call's task if the call is live here; gives it back otherwise.
    /// An end that cannot be queued (the queue is full: the task is stuck, or ending already)
    /// cancels the call instead; other commands are then dropped with a warning.
    fn send_local(&self, call_id: &CallId, command: CallCommand) -> Result<(), CallCommand> {
        let Some(handle) = self.inner.registry.get(call_id) else {
            return Err(command);
        };
        let ends = matches!(
            command,
            CallCommand::RemoteTerminated | CallCommand::Hangup(_)
        );
        if handle.commands.try_send(command).is_err() {
            if ends {
                handle.cancel.cancel();
            } else {
                warn!(%call_id, "call command queue full; command dropped");
            }
        }
        Ok(())
    }
}

/// What the fleet carries of a command for a placed call.
fn fleet_event(command: &CallCommand) -> Option<FleetEvent> {
    match command {
        CallCommand::RemoteAnswer(sdp) => Some(FleetEvent::Answer { sdp: sdp.clone() }),
        CallCommand::RemoteAccepted => Some(FleetEvent::Accepted),
        CallCommand::RemoteRejected => Some(FleetEvent::Rejected),
        CallCommand::RemoteTerminated | CallCommand::Hangup(_) => None,
    }
}
