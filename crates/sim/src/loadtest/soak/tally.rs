//! The soak run's counts (cycles and calls by kind, the Graph API actions the bridge made,
//! errors) and its report: printed, and written as `soak.csv` (one `figure,value` row each).

use std::time::Duration;

use super::cycles::{Kind, Outcome};
use super::leaks::{Leaks, Observation};
use super::observe::Footprint;
use crate::graph_double::RecordedAction;

/// The Graph API actions counted by name; any other is counted as `other`.
const ACTIONS: [&str; 4] = ["pre_accept", "accept", "reject", "terminate"];
/// Error messages kept for the report (the count goes on).
const KEPT_ERRORS: usize = 20;

#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Cycles and calls by [`Kind::ALL`] index.
    cycles: [u64; Kind::ALL.len()],
    calls: [u64; Kind::ALL.len()],
    /// By [`ACTIONS`] index, then `other`.
    actions: [u64; ACTIONS.len() + 1],
    pub(super) errors: u64,
    first_errors: Vec<String>,
}

impl Tally {
    pub(super) fn add(&mut self, outcome: Outcome) {
        let kind = Kind::ALL
            .iter()
            .position(|k| *k == outcome.kind)
            .unwrap_or_default();
        self.cycles[kind] += 1;
        self.calls[kind] += outcome.calls;
        for error in outcome.errors {
            self.error(error);
        }
    }

    /// Counts what the Graph double saw; an answer other than 2xx is an error too.
    pub(super) fn add_actions(&mut self, actions: &[RecordedAction]) {
        for action in actions {
            let index = ACTIONS
                .iter()
                .position(|name| *name == action.action)
                .unwrap_or(ACTIONS.len());
            self.actions[index] += 1;
            if !(200..300).contains(&action.status) {
                self.error(format!(
                    "the Graph API double answered {} to {} of {}",
                    action.status,
                    action.action,
                    action.call_id.as_ref().map_or("?", |id| id.as_str())
                ));
            }
        }
    }

    /// What the Graph double saw of one call of a `kind` cycle, counted and checked: the
    /// bridge answers a call at most once (a duplicate connect must not be pre-accepted
    /// again), and a connect after its terminate is not answered at all.
    pub(super) fn add_call(&mut self, kind: Kind, actions: &[RecordedAction]) {
        self.add_actions(actions);
        let pre_accepts: Vec<&RecordedAction> = actions
            .iter()
            .filter(|a| a.action == "pre_accept")
            .collect();
        let call_id = pre_accepts
            .first()
            .and_then(|a| a.call_id.as_ref())
            .map_or("?", |id| id.as_str())
            .to_owned();
        if kind == Kind::TerminateFirst && !pre_accepts.is_empty() {
            self.error(format!(
                "{call_id}: its connect came after its terminate and was pre-accepted"
            ));
        } else if pre_accepts.len() > 1 {
            self.error(format!(
                "{call_id}: pre-accepted {} times",
                pre_accepts.len()
            ));
        }
    }

    pub(super) fn error(&mut self, message: String) {
        self.errors += 1;
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(message);
        }
    }

    pub(super) fn calls(&self) -> u64 {
        self.calls.iter().sum()
    }

    pub(super) fn cycles(&self) -> u64 {
        self.cycles.iter().sum()
    }

    /// `(figure, value)` pairs of the counts.
    fn figures(&self) -> Vec<(String, String)> {
        let mut figures = Vec::new();
        for (n, kind) in Kind::ALL.iter().enumerate() {
            figures.push((
                format!("cycles_{}", kind.label()),
                self.cycles[n].to_string(),
            ));
            figures.push((format!("calls_{}", kind.label()), self.calls[n].to_string()));
        }
        for (n, action) in ACTIONS.iter().chain(["other"].iter()).enumerate() {
            figures.push((format!("graph_{action}"), self.actions[n].to_string()));
        }
        figures.push(("errors".into(), self.errors.to_string()));
        figures
    }
}

/// Everything the report says.
pub(super) struct Report<'a> {
    pub(super) seed: u64,
    pub(super) concurrency: usize,
    pub(super) tally: &'a Tally,
    pub(super) elapsed: Duration,
    pub(super) idle: bool,
    pub(super) baseline: Observation,
    pub(super) after: Observation,
    pub(super) settled_in: Duration,
    pub(super) leaks: Leaks,
    /// The harness's own, at the baseline and after the cycles.
    pub(super) harness: (Footprint, Footprint),
}

impl Report<'_> {
    fn figures(&self) -> Vec<(String, String)> {
        let mut figures = vec![
            ("seed".to_owned(), self.seed.to_string()),
            ("concurrency".to_owned(), self.concurrency.to_string()),
            ("cycles".to_owned(), self.tally.cycles().to_string()),
            ("calls".to_owned(), self.tally.calls().to_string()),
            (
                "elapsed_s".to_owned(),
                format!("{:.1}", self.elapsed.as_secs_f64()),
            ),
            ("calls_per_s".to_owned(), format!("{:.1}", self.rate())),
            ("bridge_idle".to_owned(), self.idle.to_string()),
            (
                "settled_s".to_owned(),
                format!("{:.1}", self.settled_in.as_secs_f64()),
            ),
        ];
        figures.extend(self.tally.figures());
        let (before, after) = self.harness;
        figures.push(("harness_fds_baseline".into(), before.fds.to_string()));
        figures.push(("harness_fds_after".into(), after.fds.to_string()));
        figures.push((
            "harness_rss_mib_baseline".into(),
            format!("{:.1}", before.rss_mib),
        ));
        figures.push((
            "harness_rss_mib_after".into(),
            format!("{:.1}", after.rss_mib),
        ));
        let (b, a, l) = (&self.baseline, &self.after, &self.leaks);
        let rows: [(&str, String, String, String); 8] = [
            (
                "permits",
                b.active_calls.to_string(),
                a.active_calls.to_string(),
                l.permits.to_string(),
            ),
            (
                "registry_entries",
                (b.calls + b.phones + b.reserved + b.early_commands).to_string(),
                (a.calls + a.phones + a.reserved + a.early_commands).to_string(),
                l.entries.to_string(),
            ),
            (
                "tombstones",
                b.tombstones.to_string(),
                a.tombstones.to_string(),
                String::new(),
            ),
            (
                "tasks",
                b.tasks.to_string(),
                a.tasks.to_string(),
                l.tasks.to_string(),
            ),
            (
                "fds",
                b.fds.to_string(),
                a.fds.to_string(),
                l.fds.to_string(),
            ),
            (
                "udp_sockets",
                b.udp_sockets.to_string(),
                a.udp_sockets.to_string(),
                l.udp_sockets.to_string(),
            ),
            (
                "graph_connections",
                b.graph_connections.to_string(),
                a.graph_connections.to_string(),
                String::new(),
            ),
            (
                "rss_mib",
                format!("{:.1}", b.rss_mib),
                format!("{:.1}", a.rss_mib),
                format!("{:.1}", l.rss_mib),
            ),
        ];
        for (name, baseline, after, leaked) in rows {
            figures.push((format!("{name}_baseline"), baseline));
            figures.push((format!("{name}_after"), after));
            if !leaked.is_empty() {
                figures.push((format!("{name}_leaked"), leaked));
            }
        }
        figures
    }

    /// Calls per second of the cycles.
    fn rate(&self) -> f64 {
        self.tally.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(super) fn csv(&self) -> String {
        let mut text = String::from("figure,value\n");
        for (figure, value) in self.figures() {
            text.push_str(&format!("{figure},{value}\n"));
        }
        text
    }

    pub(super) fn render(&self) -> String {
        let t = self.tally;
        let mut text = format!(
            "Soak: {} calls in {} cycles in {:.1} s ({:.1} calls/s, {} at a time, seed {}).\n",
            t.calls(),
            t.cycles(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.concurrency,
            self.seed
        );
        text.push_str("  cycles (calls) by kind:");
        for (n, kind) in Kind::ALL.iter().enumerate() {
            text.push_str(&format!(
                " {} {} ({})",
                kind.label(),
                t.cycles[n],
                t.calls[n]
            ));
        }
        text.push_str("\n  Graph API actions:");
        for (n, action) in ACTIONS.iter().chain(["other"].iter()).enumerate() {
            text.push_str(&format!(" {action} {}", t.actions[n]));
        }
        text.push_str(&format!("\n  errors: {}\n", t.errors));
        for error in &t.first_errors {
            text.push_str(&format!("    {error}\n"));
        }
        let (b, a, l) = (&self.baseline, &self.after, &self.leaks);
        text.push_str(&format!(
            "  after the cycles (bridge idle: {}, settled in {:.1} s), against the baseline:\n",
            self.idle,
            self.settled_in.as_secs_f64()
        ));
        text.push_str(&format!(
            "    permits {} -> {}; registry calls/phones/reserved/early {}/{}/{}/{} -> {}/{}/{}/{}; tombstones {} -> {}\n",
            b.active_calls, a.active_calls, b.calls, b.phones, b.reserved, b.early_commands,
            a.calls, a.phones, a.reserved, a.early_commands, b.tombstones, a.tombstones
        ));
        text.push_str(&format!(
            "    tasks {} -> {}; fds {} -> {} (UDP {} -> {}, pooled Graph API connections {} -> {}); RSS {:.1} -> {:.1} MiB\n",
            b.tasks, a.tasks, b.fds, a.fds, b.udp_sockets, a.udp_sockets,
            b.graph_connections, a.graph_connections, b.rss_mib, a.rss_mib
        ));
        text.push_str(&format!(
            "  leaked: permits {}, registry entries {}, tasks {}, fds {}, UDP sockets {}; RSS {:+.1} MiB\n",
            l.permits, l.entries, l.tasks, l.fds, l.udp_sockets, l.rss_mib
        ));
        let (before, after) = self.harness;
        text.push_str(&format!(
            "  the harness itself: fds {} -> {}, RSS {:.1} -> {:.1} MiB\n",
            before.fds, after.fds, before.rss_mib, after.rss_mib
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn action(name: &str, status: u16) -> RecordedAction {
        RecordedAction {
            action: name.into(),
            call_id: Some(bridge::ids::CallId::new("wacid.SOAK1")),
            body: serde_json::Value::Null,
            sdp: None,
            status,
            received_at: Instant::now(),
            responded_at: Instant::now(),
        }
    }

    #[test]
    fn a_call_answered_twice_or_after_its_terminate_is_an_error() {
        let mut tally = Tally::default();
        tally.add_call(Kind::Duplicate, &[action("pre_accept", 200)]);
        tally.add_call(Kind::TerminateFirst, &[]);
        assert_eq!(tally.errors, 0);
        tally.add_call(
            Kind::Duplicate,
            &[action("pre_accept", 200), action("pre_accept", 200)],
        );
        tally.add_call(Kind::TerminateFirst, &[action("pre_accept", 200)]);
        assert_eq!(tally.errors, 2);
        assert_eq!(tally.actions[0], 4);
        assert!(tally.first_errors[0].contains("pre-accepted 2 times"));
        assert!(tally.first_errors[1].contains("after its terminate"));
    }

    #[test]
    fn actions_are_counted_by_name_and_refused_ones_are_errors() {
        let mut tally = Tally::default();
        tally.add_actions(&[
            action("pre_accept", 200),
            action("accept", 200),
            action("terminate", 200),
            action("reject", 400),
            action("bogus", 200),
        ]);
        tally.add(Outcome {
            kind: Kind::Storm,
            calls: 5,
            call_ids: Vec::new(),
            errors: vec!["connect wacid.SOAK3 answered 500".into()],
        });
        assert_eq!(tally.actions, [1, 1, 1, 1, 1]);
        assert_eq!(tally.errors, 2);
        assert_eq!((tally.cycles(), tally.calls()), (1, 5));
        let report = Report {
            seed: 7,
            concurrency: 4,
            tally: &tally,
            elapsed: Duration::from_secs(2),
            idle: true,
            baseline: Observation::default(),
            after: Observation::default(),
            settled_in: Duration::ZERO,
            leaks: Leaks::default(),
            harness: (Footprint::default(), Footprint::default()),
        };
        let csv = report.csv();
        assert!(csv.contains("\ncalls_per_s,2.5\n"), "{csv}");
        assert!(csv.contains("\ncalls_storm,5\n"));
        assert!(csv.contains("\ngraph_reject,1\n"));
        assert!(csv.contains("\nerrors,2\n"));
        let text = report.render();
        assert!(
            text.contains("answered 400 to reject of wacid.SOAK1"),
            "{text}"
        );
        assert!(text.contains("seed 7"));
    }
}
