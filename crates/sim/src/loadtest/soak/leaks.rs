//! What a soak run compares: the bridge observed idle after a warm-up (the baseline) and idle
//! again after every cycle has ended, and what is left over between the two.

/// RSS above the baseline that `--strict` still accepts, in MiB.
pub(super) const RSS_SLACK_MIB: f64 = 5.0;

/// The idle bridge at one instant, from its `/metrics` and from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Observation {
    /// `whatsapp_bridge_active_calls`: admission permits held.
    pub(super) active_calls: i64,
    /// `whatsapp_bridge_registry_entries` by map.
    pub(super) calls: i64,
    pub(super) phones: i64,
    pub(super) reserved: i64,
    pub(super) tombstones: i64,
    pub(super) early_commands: i64,
    /// `whatsapp_bridge_runtime_alive_tasks`.
    pub(super) tasks: i64,
    /// Entries of `/proc/<pid>/fd`.
    pub(super) fds: i64,
    /// Of them, UDP sockets.
    pub(super) udp_sockets: i64,
    /// Of them, established TCP connections to the Graph API double: the bridge's HTTP client
    /// keeps up to 16 idle for 90 s, each with a connection task, so they are told apart from
    /// leaks.
    pub(super) graph_connections: i64,
    pub(super) rss_mib: f64,
}

/// What the bridge kept after the cycles beyond what it had at the baseline. Negative values
/// (less than at the baseline) are no leak.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Leaks {
    pub(super) permits: i64,
    /// Live calls, busy callers and reservations beyond the baseline, tombstones beyond the
    /// call ids the cycles used (each is kept for the tombstone lifetime, no longer), and
    /// early commands beyond the baseline.
    pub(super) entries: i64,
    /// Alive tasks beyond the baseline, less the extra pooled Graph API connections' tasks.
    pub(super) tasks: i64,
    /// File descriptors beyond the baseline, less the extra pooled Graph API connections.
    pub(super) fds: i64,
    pub(super) udp_sockets: i64,
    pub(super) rss_mib: f64,
}

impl Leaks {
    /// `after` against `baseline`, when the cycles between them used `call_ids` new call ids.
    pub(super) fn between(baseline: &Observation, after: &Observation, call_ids: u64) -> Leaks {
        let pooled = after.graph_connections - baseline.graph_connections;
        let tombstone_bound = baseline.tombstones + call_ids as i64;
        let entries = (after.calls - baseline.calls).max(0)
            + (after.phones - baseline.phones).max(0)
            + (after.reserved - baseline.reserved).max(0)
            + (after.tombstones - tombstone_bound).max(0)
            + (after.early_commands - baseline.early_commands).max(0);
        Leaks {
            permits: after.active_calls - baseline.active_calls,
            entries,
            tasks: after.tasks - baseline.tasks - pooled,
            fds: after.fds - baseline.fds - pooled,
            udp_sockets: after.udp_sockets - baseline.udp_sockets,
            rss_mib: after.rss_mib - baseline.rss_mib,
        }
    }

    /// Nothing left over: no permit, entry, task, fd or UDP socket, and the RSS back within
    /// [`RSS_SLACK_MIB`] of the baseline.
    pub(super) fn none(&self) -> bool {
        self.permits <= 0
            && self.entries <= 0
            && self.tasks <= 0
            && self.fds <= 0
            && self.udp_sockets <= 0
            && self.rss_mib <= RSS_SLACK_MIB
    }

    /// What is left over, one phrase each (empty when [`Leaks::none`]).
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut count = |n: i64, what: &str| {
            if n > 0 {
                problems.push(format!("{n} {what} leaked"));
            }
        };
        count(self.permits, "permits");
        count(self.entries, "registry entries");
        count(self.tasks, "tasks");
        count(self.fds, "file descriptors");
        count(self.udp_sockets, "UDP sockets");
        if self.rss_mib > RSS_SLACK_MIB {
            problems.push(format!(
                "RSS {:.1} MiB above the baseline (slack {RSS_SLACK_MIB} MiB)",
                self.rss_mib
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Observation {
        Observation {
            tombstones: 10,
            tasks: 40,
            fds: 30,
            udp_sockets: 0,
            graph_connections: 2,
            rss_mib: 20.0,
            ..Observation::default()
        }
    }

    #[test]
    fn a_bridge_back_at_its_baseline_leaks_nothing_even_with_more_pooled_connections() {
        let after = Observation {
            // 100 call ids used, each remembered.
            tombstones: 110,
            // Five more idle Graph API connections, each a socket and a task.
            graph_connections: 7,
            tasks: 45,
            fds: 35,
            rss_mib: 24.9,
            ..idle()
        };
        let leaks = Leaks::between(&idle(), &after, 100);
        assert_eq!(leaks.tasks, 0);
        assert_eq!(leaks.fds, 0);
        assert_eq!(leaks.entries, 0);
        assert!(leaks.none(), "{leaks:?}");
        assert!(leaks.problems().is_empty());
    }

    #[test]
    fn permits_entries_tasks_fds_and_memory_left_over_are_each_reported() {
        let after = Observation {
            active_calls: 1,
            calls: 1,
            phones: 1,
            // Two more tombstones than call ids used.
            tombstones: 112,
            tasks: 43,
            fds: 32,
            udp_sockets: 1,
            rss_mib: 25.5,
            ..idle()
        };
        let leaks = Leaks::between(&idle(), &after, 100);
        assert_eq!(leaks.permits, 1);
        assert_eq!(leaks.entries, 4);
        assert_eq!(leaks.tasks, 3);
        assert_eq!(leaks.fds, 2);
        assert_eq!(leaks.udp_sockets, 1);
        assert!(!leaks.none());
        let problems = leaks.problems();
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems[0].starts_with("1 permits"));
        assert!(problems[5].starts_with("RSS 5.5 MiB"));
    }

    #[test]
    fn each_kind_of_leak_alone_fails_the_comparison() {
        let base = idle();
        let bump: [fn(&mut Observation); 6] = [
            |o| o.active_calls += 1,
            |o| o.tombstones += 101,
            |o| o.tasks += 1,
            |o| o.fds += 1,
            |o| o.udp_sockets += 1,
            |o| o.rss_mib += 5.1,
        ];
        for (n, bump) in bump.iter().enumerate() {
            let mut after = base;
            bump(&mut after);
            assert!(!Leaks::between(&base, &after, 100).none(), "case {n}");
        }
    }
}
