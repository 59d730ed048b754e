//! Hands each Graph API action the bridge makes to the phone waiting for it, from one
//! subscription to the Graph double (rather than every phone scanning the whole record).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot};

use crate::graph_double::{GraphDouble, RecordedAction};
use bridge::ids::CallId;

/// The actions phones wait for.
const WATCHED: [&str; 2] = ["pre_accept", "accept"];

type Waiters = HashMap<(CallId, &'static str), oneshot::Sender<RecordedAction>>;

#[derive(Clone)]
pub struct GraphWatch {
    graph: GraphDouble,
    waiters: Arc<Mutex<Waiters>>,
}

impl GraphWatch {
    pub fn start(graph: GraphDouble) -> Self {
        let waiters: Arc<Mutex<Waiters>> = Arc::default();
        let mut actions = graph.subscribe();
        let routes = waiters.clone();
        tokio::spawn(async move {
            loop {
                match actions.recv().await {
                    Ok(action) => {
                        let Some(call_id) = action.call_id.clone() else {
                            continue;
                        };
                        let Some(&name) = WATCHED.iter().find(|name| **name == action.action)
                        else {
                            continue;
                        };
                        let waiter = routes.lock().remove(&(call_id, name));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(action);
                        }
                    }
                    // Only the overflow flood can outrun the channel, and nobody waits then.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self { graph, waiters }
    }

    pub fn double(&self) -> &GraphDouble {
        &self.graph
    }

    /// A receiver for the call's next `action` (register it before causing it).
    pub fn expect(
        &self,
        call_id: &CallId,
        action: &'static str,
    ) -> oneshot::Receiver<RecordedAction> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert((call_id.clone(), action), tx);
        rx
    }

    /// Drops whatever still waits for this call.
    pub fn forget(&self, call_id: &CallId) {
        self.waiters.lock().retain(|(id, _), _| id != call_id);
    }
}
