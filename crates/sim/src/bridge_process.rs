//! A bridge as a process of its own: started here (`serve` of this same binary or the one named,
//! wired to the doubles) or already running. Its CPU and memory are read from `/proc`, its
//! counters from `/metrics`. The load harness measures it; the fleet runs several.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::graph_double::GraphDoubleConfig;
use bridge::config;
use bridge::media::codec::EncoderSettings;

/// How long a started bridge may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// CPU time and memory of a process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in MiB.
    pub rss_mib: f64,
    /// The part of it that is anonymous memory (heap, stacks), not pages of mapped files such
    /// as the executable's code.
    pub rss_anon_mib: f64,
}

impl ProcSample {
    /// Several processes taken as one: CPU time and memory added up, the latest instant.
    pub fn total(samples: &[ProcSample]) -> Option<ProcSample> {
        let first = samples.first()?;
        Some(ProcSample {
            at: samples.iter().map(|s| s.at).max().unwrap_or(first.at),
            cpu_seconds: samples.iter().map(|s| s.cpu_seconds).sum(),
            rss_mib: samples.iter().map(|s| s.rss_mib).sum(),
            rss_anon_mib: samples.iter().map(|s| s.rss_anon_mib).sum(),
        })
    }

    /// Cores used on average between `earlier` and `self`.
    pub fn cores_since(&self, earlier: &ProcSample) -> f64 {
        let wall = (self.at - earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_seconds - earlier.cpu_seconds) / wall
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on every Linux we run on),
/// asked of `getconf` once.
pub(crate) fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS, RssAnon).
pub fn sample(pid: Option<u32>) -> anyhow::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    };
    let at = Instant::now();
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading {}/stat", dir.display()))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    let status = std::fs::read_to_string(dir.join("status"))?;
    let kib = |field: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    };
    // A zombie (a bridge that has exited but not been reaped) has no VmRSS.
    let rss_kib = kib("VmRSS:").with_context(|| {
        format!(
            "no VmRSS in {}/status: the process has exited",
            dir.display()
        )
    })?;
    Ok(ProcSample {
        at,
        cpu_seconds: ticks / clock_ticks(),
        rss_mib: rss_kib / 1024.0,
        rss_anon_mib: kib("RssAnon:").unwrap_or(f64::NAN) / 1024.0,
    })
}

/// The bridge process under test.
pub struct Bridge {
    pub url: String,
    pub pid: u32,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    http: reqwest::Client,
}

/// What a started bridge is told.
pub struct Launch<'a> {
    pub graph_url: String,
    pub ai_url: String,
    pub app_secret: &'a str,
    pub max_calls: usize,
    pub encoder: EncoderSettings,
    /// The bridge's log goes here.
    pub log: &'a Path,
    /// CPUs the bridge may run on (a `taskset -c` list such as `0`), so it can be measured on
    /// cores of its own.
    pub cpus: Option<&'a str>,
    /// The binary to run; `None`: this one.
    pub exe: Option<&'a Path>,
    /// More settings (`KEY`, value), e.g. the fleet's `REDIS_URL`.
    pub settings: Vec<(String, String)>,
}

impl Bridge {
    /// Starts `serve` of this binary on a free loopback port, wired to the doubles.
    pub async fn start(launch: Launch<'_>) -> anyhow::Result<Bridge> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let graph = GraphDoubleConfig::default();
        let data_dir = std::env::temp_dir().join(format!("wvb-loadtest-{}", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(launch.log)
            .with_context(|| format!("creating {}", launch.log.display()))?;
        let exe = match launch.exe {
            Some(exe) => exe.to_owned(),
            None => std::env::current_exe()?,
        };
        let encoder = launch.encoder;
        let mut command = match launch.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| config::QUIET_LOG_FILTER.into()),
            )
            .env(config::PORT, port.to_string())
            .env(config::BIND_ADDR, "127.0.0.1")
            .env(config::WHATSAPP_APP_SECRET, launch.app_secret)
            .env(config::WHATSAPP_VERIFY_TOKEN, "loadtest")
            .env(config::WHATSAPP_GRAPH_URL, &launch.graph_url)
            .env(config::WHATSAPP_GRAPH_VERSION, &graph.version)
            .env(config::WHATSAPP_PHONE_NUMBER_ID, &graph.phone_number_id)
            .env(config::WHATSAPP_ACCESS_TOKEN, &graph.access_token)
            .env(config::OPENAI_API_KEY, "test-key")
            .env(config::OPENAI_REALTIME_URL, &launch.ai_url)
            .env(config::MAX_CONCURRENT_CALLS, launch.max_calls.to_string())
            .env(config::WEBRTC_LOOPBACK, "true")
            .env(config::ASSISTANT_GREETING, "off")
            .env(config::DATA_DIR, &data_dir)
            // Load runs measure the calls themselves: callers refused by an overflow are not
            // called back (a setting can turn it on).
            .env(config::CALLBACK_ON_BUSY, "false")
            .env(config::OPUS_BITRATE, encoder.bitrate_bps.to_string())
            .env(config::OPUS_COMPLEXITY, encoder.complexity.to_string())
            .env(config::OPUS_BANDWIDTH, encoder.max_bandwidth.as_str())
            .envs(
                launch
                    .settings
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(
                // Allocator tuning, passed through for experiments (e.g. jemalloc decay times).
                std::env::vars().filter(|(key, _)| key == "MALLOC_CONF"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().context("starting the bridge")?;
        let pid = child.id().context("the bridge exited at once")?;
        let mut bridge = Bridge {
            url: format!("http://127.0.0.1:{port}"),
            pid,
            child: Some(child),
            data_dir: Some(data_dir),
            http: reqwest::Client::new(),
        };
        bridge.wait_healthy().await?;
        Ok(bridge)
    }

    /// A bridge someone else started.
    pub async fn attach(url: String, pid: u32) -> anyhow::Result<Bridge> {
        let mut bridge = Bridge {
            url: url.trim_end_matches('/').to_owned(),
            pid,
            child: None,
            data_dir: None,
            http: reqwest::Client::new(),
        };
        bridge.wait_healthy().await?;
        sample(Some(pid)).context("the bridge's pid is not readable in /proc")?;
        Ok(bridge)
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut check = tokio::time::interval(Duration::from_millis(50));
        loop {
            check.tick().await;
            let healthy = self
                .http
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("the bridge exited with {status} (see its log)");
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not become healthy", self.url);
            }
        }
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        sample(Some(self.pid))
    }

    /// The bridge's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(text))
    }

    /// Waits (bounded) until the bridge has no live call; returns whether it got there.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            check.tick().await;
            if let Ok(metrics) = self.metrics().await
                && metrics.value("whatsapp_bridge_active_calls", &[]) == 0.0
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }

    /// Kills a bridge started here at once (SIGKILL), as a crashed replica; waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops a bridge this harness started (SIGTERM twice: drain, then end), and removes its data.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            for _ in 0..2 {
                let _ = Command::new("kill")
                    .args(["-TERM", &self.pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `/metrics` text, read the way a Prometheus server would (sums over matching series).
pub struct Metrics(String);

impl Metrics {
    /// Several processes' metrics read as one: every series of each, so sums span them all.
    pub fn combined(all: Vec<Metrics>) -> Metrics {
        Metrics(all.into_iter().map(|m| m.0).collect::<Vec<_>>().join("\n"))
    }

    /// A histogram's cumulative buckets `(le, count)` (summed over its series), by `le`.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket{{");
        let mut sums: Vec<(f64, f64)> = Vec::new();
        for line in self.0.lines().filter(|line| line.starts_with(&bucket)) {
            let parsed = line.split("le=\"").nth(1).and_then(|rest| {
                let le = rest.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count: f64 = line.rsplit_once(' ')?.1.parse().ok()?;
                Some((le, count))
            });
            let Some((le, count)) = parsed else {
                continue;
            };
            match sums.iter_mut().find(|(l, _)| *l == le) {
                Some(entry) => entry.1 += count,
                None => sums.push((le, count)),
            }
        }
        sums.sort_by(|a, b| a.0.total_cmp(&b.0));
        sums
    }

    /// Frames the bridge has sent more than 10 ms after their slot: all the send-delay
    /// histogram's frames less those in its 10 ms bucket.
    pub fn frames_sent_late(&self) -> f64 {
        self.value("whatsapp_bridge_frame_send_delay_seconds_count", &[])
            - self.value(
                "whatsapp_bridge_frame_send_delay_seconds_bucket",
                &[("le", "0.01")],
            )
    }

    /// The sum of `name`'s series whose labels include every `(label, value)`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let matches = labels.iter().all(|(label, wanted)| {
                    label_text
                        .split(',')
                        .any(|pair| pair == format!("{label}=\"{wanted}\""))
                });
                matches.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

/// The `q` quantile (0–1) of what a histogram counted between two readings of its cumulative
/// buckets, interpolated within the bucket as Prometheus' `histogram_quantile` does; `None`
/// when nothing was counted.
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counted: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - earlier)
        })
        .collect();
    let total = counted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &counted {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_come_from_the_buckets_counted_between_two_readings() {
        let text = |counts: [u32; 4]| {
            Metrics(format!(
                "x_bucket{{le=\"0.001\"}} {}\nx_bucket{{le=\"0.002\"}} {}\nx_bucket{{le=\"0.005\"}} {}\nx_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            ))
        };
        let before = text([5, 5, 5, 5]).buckets("x");
        // 100 more: 50 under 1 ms, 40 in 1–2 ms, 10 in 2–5 ms.
        let after = text([55, 95, 105, 105]).buckets("x");
        assert_eq!(after.len(), 4);
        let p50 = quantile(&before, &after, 0.5).expect("counted");
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p99 = quantile(&before, &after, 0.99).expect("counted");
        assert!((p99 - 0.0047).abs() < 1e-6, "{p99}");
        assert_eq!(quantile(&after, &after, 0.5), None);
    }

    #[test]
    fn metrics_are_summed_over_matching_series() {
        let text = "# HELP x\n# TYPE whatsapp_bridge_audio_frames_total counter\n\
                    whatsapp_bridge_audio_frames_total{direction=\"in\"} 120\n\
                    whatsapp_bridge_audio_frames_total{direction=\"out\"} 80\n\
                    whatsapp_bridge_active_calls 3\n";
        let metrics = Metrics(text.to_owned());
        assert_eq!(metrics.value("whatsapp_bridge_active_calls", &[]), 3.0);
        assert_eq!(
            metrics.value("whatsapp_bridge_audio_frames_total", &[("direction", "in")]),
            120.0
        );
        assert_eq!(
            metrics.value("whatsapp_bridge_audio_frames_total", &[]),
            200.0
        );
        assert_eq!(metrics.value("whatsapp_bridge_missing", &[]), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let first = sample(None).expect("sample");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = sample(None).expect("sample");
        assert!(second.rss_mib > 1.0);
        assert!(second.cpu_seconds >= first.cpu_seconds);
    }
}
