//! Real-time scheduling of the threads that carry the calls' media (`SCHED_FIFO_PRIORITY`).
//!
//! Every call's 20 ms frames go out from the async runtime's threads. Under the kernel's fair
//! scheduler any other thread on the same core, a database's periodic job or a kernel thread,
//! can hold the core for several milliseconds at a time, and the frames due meanwhile go out
//! late (docs/BENCHMARKS.md, "Neighbours on the core"). With a priority set, the runtime's
//! threads run `SCHED_FIFO` at it, ahead of every normal thread, as media servers offer it
//! (Asterisk's `-p`, FreeSWITCH's `-rp`). Threads they start later (tokio's blocking pool)
//! inherit it; the embedded store's thread and the allocator's start before and stay normal.
//! Raising needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least the priority; the kernel
//! still keeps 5 % of each second for normal threads (`sched_rt_runtime_us`).

use thread_priority::{
    RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// The highest `SCHED_FIFO` priority on Linux.
pub const MAX_PRIORITY: u8 = 99;

/// Runs the calling thread `SCHED_FIFO` at `priority` (1 to [`MAX_PRIORITY`]). The threads it
/// starts afterwards inherit the policy. Fails without the privilege, changing nothing.
pub fn raise_current_thread(priority: u8) -> Result<(), String> {
    if priority == 0 || priority > MAX_PRIORITY {
        return Err(format!(
            "a SCHED_FIFO priority is 1 to {MAX_PRIORITY}, not {priority}"
        ));
    }
    let value = ThreadPriorityValue::try_from(priority)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::scheduling::thread_policy;

    #[test]
    fn a_priority_outside_1_to_99_is_refused_and_changes_nothing() {
        let pid = std::process::id();
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name()?.to_str()?.parse().ok())
            .expect("this thread's id");
        let before = thread_policy(pid, tid).expect("this thread");
        for priority in [0, 100, 255] {
            let err = raise_current_thread(priority).expect_err("refused");
            assert!(err.contains("1 to 99"), "{priority}: {err}");
        }
        assert_eq!(thread_policy(pid, tid), Some(before));
    }
}
