//! Placing calls: the entry point for business-initiated calls (reminders come next). Takes a
//! slot in the registry, a UDP port when a range is configured, and hands over to
//! [`place_outbound`].

use tokio_util::task::TaskTracker;

use super::task::{CallContext, OutboundCall, PlaceError, place_outbound};
use crate::ids::{CallId, PhoneNumber};
use crate::media::ports::PortPool;
use crate::registry::{Refusal, RefusalReason, Registry};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("refused: {}", .0.reason.as_str())]
    Refused(Refusal),
    #[error(transparent)]
    Place(#[from] PlaceError),
}

/// Places calls from the bridge; cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    pub(crate) context: CallContext,
    pub(crate) registry: Registry,
    pub(crate) tracker: TaskTracker,
    pub(crate) ports: Option<PortPool>,
}

impl Dialer {
    /// Calls `to`. `opening` is what the AI is asked to say once the callee picks up;
    /// `context` goes into its instructions. Returns Meta's call id once `connect` succeeded;
    /// the call then runs on its own task like an inbound one.
    pub async fn call(
        &self,
        to: &PhoneNumber,
        opening: &str,
        context: &str,
    ) -> Result<CallId, DialError> {
        let reservation = self.registry.reserve(to).map_err(DialError::Refused)?;
        let port = match &self.ports {
            None => None,
            Some(pool) => match pool.lease() {
                Some(port) => Some(port),
                None => {
                    self.registry.count_refusal(RefusalReason::NoUdpPort);
                    let refusal = Refusal {
                        reason: RefusalReason::NoUdpPort,
                        active_calls: self.registry.active_calls(),
                        max_calls: self.registry.max_calls(),
                    };
                    return Err(DialError::Refused(refusal));
                }
            },
        };
        let call = OutboundCall {
            reservation,
            opening: opening.to_owned(),
            context: context.to_owned(),
            port,
        };
        Ok(place_outbound(self.context.clone(), call, &self.tracker).await?)
    }
}
