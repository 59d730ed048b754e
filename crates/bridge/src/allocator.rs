//! Handing the allocator's per-thread caches back once the bridge is idle.
//!
//! jemalloc keeps freed small objects in a cache per thread and trims it only while that thread
//! goes on allocating. After a burst of calls the runtime thread of an idle bridge held about
//! 5 MiB that way (docs/BENCHMARKS.md), and nothing else would ever release it. So when the
//! last call ends, the registry asks for a flush. For the next [`FLUSH_WINDOW`] each runtime
//! thread flushes its own cache whenever it parks (tokio's `on_thread_park` hook), since the
//! ended calls' connections and tasks are still being torn down meanwhile; the memory returns to
//! the arenas, whose background thread gives it back to the OS. The embedded store's SQLite
//! thread does the same before it waits for work. A new call closes the window, so calls never
//! run on a cache that keeps being emptied. A park costs one atomic load when nothing was asked.

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tikv_jemalloc_ctl::{Access as _, AsName as _};

/// How long after the last call ended the parking threads keep flushing.
pub const FLUSH_WINDOW: Duration = Duration::from_secs(10);

/// Flush requests: when the latest window ends (in ms from `EPOCH`, plus one so that 0 means
/// none). Each thread remembers the latest it has finished with.
struct FlushRequests(AtomicU64);

impl FlushRequests {
    fn request(&self, now_ms: u64) {
        self.0.store(
            now_ms + FLUSH_WINDOW.as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }

    /// Ends an open window now (each thread still flushes once more, then stops).
    fn close(&self, now_ms: u64) {
        let latest = self.0.load(Ordering::Relaxed);
        if latest != 0 && now_ms + 1 < latest {
            let _ =
                self.0
                    .compare_exchange(latest, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Whether this thread should flush at a park at `now_ms` (read only when a request is
    /// pending); `done` is the request it has finished with, the window being over.
    fn due(&self, done: &Cell<u64>, now_ms: impl FnOnce() -> u64) -> bool {
        let latest = self.0.load(Ordering::Relaxed);
        if latest == done.get() {
            return false;
        }
        if now_ms() + 1 >= latest {
            done.set(latest);
        }
        true
    }
}

static REQUESTS: FlushRequests = FlushRequests(AtomicU64::new(0));
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

thread_local! {
    static DONE_HERE: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime thread to flush its cache when it parks during the next [`FLUSH_WINDOW`].
pub fn request_thread_cache_flush() {
    REQUESTS.request(now_ms());
}

/// Closes the flush window: a call has started.
pub fn close_thread_cache_flush() {
    REQUESTS.close(now_ms());
}

/// For the runtime's `on_thread_park` (and any long-lived thread about to wait): flushes this
/// thread's cache while a request is open.
pub fn on_thread_park() {
    if DONE_HERE.with(|done| REQUESTS.due(done, now_ms)) {
        flush_this_thread_cache();
    }
}

/// Turning the thread's cache off flushes and frees it; turning it on again starts an empty
/// one. Best effort: without jemalloc (the tests' allocator) the calls fail and change nothing.
fn flush_this_thread_cache() {
    let enabled = b"thread.tcache.enabled\0".name();
    if enabled.write(false).is_ok() {
        let _ = enabled.write(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_flush_at_every_park_in_the_window_then_stop() {
        let window = FLUSH_WINDOW.as_millis() as u64;
        let requests = FlushRequests(AtomicU64::new(0));
        let (first, second) = (Cell::new(0), Cell::new(0));
        assert!(!requests.due(&first, || 5));
        requests.request(10_000);
        assert!(requests.due(&first, || 10_001));
        assert!(requests.due(&first, || 10_000 + window / 2));
        // The first park after the window flushes once more and closes the request.
        assert!(requests.due(&first, || 10_500 + window));
        assert!(!requests.due(&first, || 10_600 + window));
        // Another thread that slept through the window still flushes once.
        assert!(requests.due(&second, || 60_000));
        assert!(!requests.due(&second, || 60_001));
        // A new request opens a new window for every thread.
        requests.request(70_000);
        assert!(requests.due(&first, || 70_001));
        assert!(requests.due(&second, || 70_500));
    }

    #[test]
    fn a_new_call_closes_the_window() {
        let window = FLUSH_WINDOW.as_millis() as u64;
        let requests = FlushRequests(AtomicU64::new(0));
        let thread = Cell::new(0);
        requests.close(100);
        assert!(!requests.due(&thread, || 100), "nothing to close");
        requests.request(50_000);
        assert!(requests.due(&thread, || 50_100));
        requests.close(50_200);
        // One last flush, then none although the window would still be open.
        assert!(requests.due(&thread, || 50_300));
        assert!(!requests.due(&thread, || 50_400));
        // Closing a closed window changes nothing.
        requests.close(50_500);
        assert!(!requests.due(&thread, || 50_600));
        assert!(50_600 < 50_000 + window);
    }

    #[test]
    fn a_window_opened_right_after_start_closes_too() {
        // The clock starts at the first request, so the first window opens at 0 ms.
        let requests = FlushRequests(AtomicU64::new(0));
        let thread = Cell::new(0);
        requests.request(0);
        assert!(requests.due(&thread, || 10));
        requests.close(1_000);
        assert!(requests.due(&thread, || 1_001));
        assert!(
            !requests.due(&thread, || 1_002),
            "closed: no flush at every park"
        );
    }

    #[test]
    fn a_flush_is_harmless_on_any_thread() {
        request_thread_cache_flush();
        on_thread_park();
        on_thread_park();
        let kept: Vec<u8> = vec![7; 4096];
        assert_eq!(kept.iter().map(|&b| u32::from(b)).sum::<u32>(), 7 * 4096);
    }
}
