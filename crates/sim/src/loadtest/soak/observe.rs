//! Reads an [`Observation`] of the bridge: its `/metrics` (permits, registry maps, tasks) and
//! `/proc/<pid>` (file descriptors, which of them are UDP sockets or connections to the Graph
//! API double, RSS).

use std::collections::HashSet;

use anyhow::Context as _;

use super::leaks::Observation;
use crate::bridge_process::Bridge;

/// TCP state `ESTABLISHED` in `/proc/net/tcp`.
const TCP_ESTABLISHED: &str = "01";

/// The bridge now; `graph_port` is the Graph API double's port.
pub(super) async fn observe(bridge: &Bridge, graph_port: u16) -> anyhow::Result<Observation> {
    let metrics = bridge.metrics().await?;
    let gauge = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels) as i64;
    let entries = |map: &str| gauge("whatsapp_bridge_registry_entries", &[("map", map)]);
    let sockets = socket_inodes(bridge.pid)?;
    Ok(Observation {
        active_calls: gauge("whatsapp_bridge_active_calls", &[]),
        calls: entries("calls"),
        phones: entries("phones"),
        reserved: entries("reserved"),
        tombstones: entries("tombstones"),
        early_commands: entries("early_commands"),
        tasks: gauge("whatsapp_bridge_runtime_alive_tasks", &[]),
        fds: sockets.fds,
        udp_sockets: count_in(&sockets.inodes, bridge.pid, &["udp", "udp6"], |_| true)?,
        graph_connections: count_in(&sockets.inodes, bridge.pid, &["tcp", "tcp6"], |fields| {
            fields.get(3) == Some(&TCP_ESTABLISHED) && remote_port(fields) == Some(graph_port)
        })?,
        rss_mib: bridge.sample()?.rss_mib,
    })
}

/// The harness's own open file descriptors and RSS (MiB): both must stay flat over a long run.
pub(super) fn harness_footprint() -> anyhow::Result<Footprint> {
    let fds = std::fs::read_dir("/proc/self/fd")?.count() as i64;
    Ok(Footprint {
        fds,
        rss_mib: crate::bridge_process::sample(None)?.rss_mib,
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Footprint {
    pub(super) fds: i64,
    pub(super) rss_mib: f64,
}

/// The process's open file descriptors, and the inodes of those that are sockets.
struct Sockets {
    fds: i64,
    inodes: HashSet<u64>,
}

fn socket_inodes(pid: u32) -> anyhow::Result<Sockets> {
    let dir = format!("/proc/{pid}/fd");
    let mut sockets = Sockets {
        fds: 0,
        inodes: HashSet::new(),
    };
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // An fd closed between listing and reading its link is simply gone.
        let Ok(entry) = entry else { continue };
        sockets.fds += 1;
        if let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|link| parse_socket_link(&link.to_string_lossy()))
        {
            sockets.inodes.insert(inode);
        }
    }
    Ok(sockets)
}

/// The inode of a `socket:[12345]` link.
fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The remote port of a `/proc/net/tcp` line's fields (`rem_address` is `HEXIP:HEXPORT`).
fn remote_port(fields: &[&str]) -> Option<u16> {
    let (_, port) = fields.get(2)?.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// How many lines of the process's `/proc/<pid>/net/<table>` tables are for one of `inodes`
/// (field 9) and pass `keep`.
fn count_in(
    inodes: &HashSet<u64>,
    pid: u32,
    tables: &[&str],
    keep: impl Fn(&[&str]) -> bool,
) -> anyhow::Result<i64> {
    let mut count = 0;
    for table in tables {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        count += count_lines(&text, inodes, &keep);
    }
    Ok(count)
}

fn count_lines(text: &str, inodes: &HashSet<u64>, keep: &impl Fn(&[&str]) -> bool) -> i64 {
    text.lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| {
            fields
                .get(9)
                .and_then(|inode| inode.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
        .filter(|fields| keep(fields))
        .count() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 20 4 30 10 -1
   1: 0100007F:A1B3 0100007F:1F90 06 00000000:00000000 00:00000000 00000000  1000        0 112 1 0 20 4 30 10 -1
   2: 0100007F:A1B4 0100007F:0050 01 00000000:00000000 00:00000000 00000000  1000        0 113 1 0 20 4 30 10 -1
   3: 0100007F:A1B5 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 999 1 0 20 4 30 10 -1
";

    #[test]
    fn only_the_processs_established_connections_to_the_port_are_counted() {
        let inodes: HashSet<u64> = [111, 112, 113].into();
        // Port 0x1F90 = 8080: 111 counts; 112 is TIME_WAIT, 113 goes elsewhere, 999 is not ours.
        let to_8080 =
            |f: &[&str]| f.get(3) == Some(&TCP_ESTABLISHED) && remote_port(f) == Some(8080);
        assert_eq!(count_lines(TCP, &inodes, &to_8080), 1);
        assert_eq!(count_lines(TCP, &inodes, &|_: &[&str]| true), 3);
        assert_eq!(parse_socket_link("socket:[4242]"), Some(4242));
        assert_eq!(parse_socket_link("pipe:[4242]"), None);
    }
}
