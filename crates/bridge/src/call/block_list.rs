//! The numbers the business neither answers nor calls: kept in the store (shared by the
//! replicas, kept across restarts) and cached here, so that admission never waits on the store.
//! The cache is read again every `BLOCK_LIST_REFRESH` (changes made through other replicas) and
//! changed at once by a change made through this one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ids::PhoneNumber;
use crate::store::{BlockedCaller, Store, StoreError};

/// The block list of this process; cheap to clone.
#[derive(Clone)]
pub struct BlockList {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The store's rows as last read (or changed here).
    cached: RwLock<HashMap<PhoneNumber, BlockedCaller>>,
}

impl BlockList {
    /// An empty cache: [`Self::refresh`] fills it (at start, then periodically).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cached: RwLock::default(),
            }),
        }
    }

    /// Whether the number is blocked, as of the last read or local change.
    pub fn is_blocked(&self, phone: &PhoneNumber) -> bool {
        self.inner.cached.read().contains_key(phone)
    }

    /// Reads the list from the store; on failure the cache is kept as it was.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let rows = self.inner.store.list_blocked().await?;
        *self.inner.cached.write() = rows
            .into_iter()
            .map(|row| (row.phone_number.clone(), row))
            .collect();
        Ok(())
    }

    /// Every blocked number, read from the store (which also refreshes the cache).
    pub async fn list(&self) -> Result<Vec<BlockedCaller>, StoreError> {
        let rows = self.inner.store.list_blocked().await?;
        *self.inner.cached.write() = rows
            .iter()
            .map(|row| (row.phone_number.clone(), row.clone()))
            .collect();
        Ok(rows)
    }

    /// Blocks a number in the store, then here at once.
    pub async fn block(
        &self,
        phone: &PhoneNumber,
        reason: Option<&str>,
    ) -> Result<BlockedCaller, StoreError> {
        let row = self
            .inner
            .store
            .block_caller(phone, reason, Utc::now())
            .await?;
        self.inner.cached.write().insert(phone.clone(), row.clone());
        Ok(row)
    }

    /// Unblocks a number in the store, then here at once; false when it was not blocked.
    pub async fn unblock(&self, phone: &PhoneNumber) -> Result<bool, StoreError> {
        let removed = self.inner.store.unblock_caller(phone).await?;
        self.inner.cached.write().remove(phone);
        Ok(removed)
    }

    /// Reads the list again every `period` until `shutdown`; a failed read keeps the last list.
    pub async fn run_refresh(self, period: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.refresh().await {
                Ok(()) => debug!(blocked = self.inner.cached.read().len(), "block list read"),
                Err(err) => warn!(%err, "the block list could not be read; the last one is kept"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_change_here_applies_at_once_and_another_replicas_at_the_next_read() {
        let dir = std::env::temp_dir().join(format!("wvb-blocked-{}", uuid::Uuid::new_v4()));
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).expect("store"));
        let (here, there) = (BlockList::new(store.clone()), BlockList::new(store.clone()));
        let caller = PhoneNumber::new("447700900123");
        here.block(&caller, Some("abuse")).await.expect("blocked");
        assert!(here.is_blocked(&caller));
        // The other replica learns of it when it reads the store again.
        assert!(!there.is_blocked(&caller));
        there.refresh().await.expect("read");
        assert!(there.is_blocked(&caller));
        assert!(there.unblock(&caller).await.expect("unblocked"));
        assert!(!there.is_blocked(&caller));
        here.refresh().await.expect("read");
        assert!(!here.is_blocked(&caller));
        let _ = std::fs::remove_dir_all(dir);
    }
}
