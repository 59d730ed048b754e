//! The UDP port pool of `WEBRTC_UDP_PORTS`: each call leases one port and gives it back on drop.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Arc;

use parking_lot::Mutex;

/// A fixed range of UDP ports shared by all calls of this process.
#[derive(Clone, Debug)]
pub struct PortPool {
    free: Arc<Mutex<VecDeque<u16>>>,
    size: usize,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let free: VecDeque<u16> = range.collect();
        let size = free.len();
        Self {
            free: Arc::new(Mutex::new(free)),
            size,
        }
    }

    /// Takes the least recently used free port, or `None` when every port is in use.
    pub fn lease(&self) -> Option<PortLease> {
        let port = self.free.lock().pop_front()?;
        Some(PortLease {
            port,
            pool: self.clone(),
        })
    }

    pub fn available(&self) -> usize {
        self.free.lock().len()
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

/// One leased port; returned to the back of the pool when dropped, so a port that was just
/// released is the last to be reused (late packets of the old call find nobody listening).
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    pool: PortPool,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.free.lock().push_back(self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_refuses_and_a_dropped_lease_frees_its_port() {
        let pool = PortPool::new(40000..=40001);
        let a = pool.lease().expect("first port");
        let b = pool.lease().expect("second port");
        assert_ne!(a.port(), b.port());
        assert!(pool.lease().is_none());
        let freed = a.port();
        drop(a);
        assert_eq!(pool.available(), 1);
        assert_eq!(pool.lease().map(|l| l.port()), Some(freed));
        drop(b);
    }
}
