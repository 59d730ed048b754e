//! A thread's scheduling as the kernel reports it, for tests of `SCHED_FIFO_PRIORITY`.

/// The `SCHED_FIFO` policy number, as [`thread_policy`] reports it.
pub const SCHED_FIFO: u32 = 1;

/// A thread's scheduling policy and real-time priority, as the kernel reports them
/// (`/proc/<pid>/task/<tid>/stat`; what `chrt -p` shows). `None` when the thread is gone.
pub fn thread_policy(pid: u32, tid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The fields after the parenthesised name, which may itself hold spaces or parentheses;
    // `rt_priority` and `policy` are fields 40 and 41 of the whole line.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let rt_priority = fields.get(40 - 3)?.parse().ok()?;
    let policy = fields.get(41 - 3)?.parse().ok()?;
    Some((policy, rt_priority))
}
