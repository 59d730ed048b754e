//! The fleet's Redis keys, all under one prefix. The prefix is a hash tag (`{wvb}:call:…`), so
//! every key of a fleet lives in one hash slot: a clustered Redis (Azure Managed Redis) runs the
//! fleet's multi-key scripts as a single one does.

use crate::ids::{CallId, PhoneNumber};

pub(super) struct Keys {
    /// `{prefix}`, braces included.
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: format!("{{{}}}", prefix.trim_end_matches(':')),
        }
    }

    /// The call's owner (a replica name).
    pub(super) fn call(&self, id: &CallId) -> String {
        format!("{}:call:{}", self.prefix, id)
    }

    /// The caller's one live call: `owner|call id` (or `owner|placing:…` while an outbound call
    /// is placed). A hidden number has no key: the argument that names it is never written.
    pub(super) fn caller(&self, phone: Option<&PhoneNumber>) -> String {
        match phone {
            Some(phone) => format!("{}:caller:{}", self.prefix, phone.as_str()),
            None => format!("{}:caller:-", self.prefix),
        }
    }

    /// An ended or refused call id.
    pub(super) fn tomb(&self, id: &CallId) -> String {
        format!("{}:tomb:{}", self.prefix, id)
    }

    /// Events kept for a call nobody owns yet.
    pub(super) fn early(&self, id: &CallId) -> String {
        format!("{}:early:{}", self.prefix, id)
    }

    /// A replica's inbox of forwarded events (a stream).
    pub(super) fn inbox(&self, replica: &str) -> String {
        format!("{}:inbox:{}", self.prefix, replica)
    }

    /// A replica's latest report; while it exists the replica counts as alive.
    pub(super) fn report(&self, replica: &str) -> String {
        format!("{}{}", self.report_prefix(), replica)
    }

    /// What a replica's report key starts with; the scripts add the replica's name.
    pub(super) fn report_prefix(&self) -> String {
        format!("{}:replica:", self.prefix)
    }

    /// The replicas that reported lately, scored by when their report expires (ms).
    pub(super) fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// A fixed-window counter (`counters.rs`).
    pub(super) fn counter(&self, name: &str) -> String {
        format!("{}:count:{}", self.prefix, name)
    }
}
