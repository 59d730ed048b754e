//! What the harness measures: one bridge process, or a fleet of them sharing a Redis
//! (`--replicas N`), taken as one: their CPU and memory added up, their metrics read together,
//! and the Redis's own work counted.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::bridge_process::{Bridge, Metrics, ProcSample};

pub(super) struct Target {
    pub(super) replicas: Vec<Bridge>,
    /// `host:port` of the fleet's Redis.
    redis: Option<String>,
}

/// The Redis server's own counters (`INFO`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RedisStats {
    /// Commands clients sent (a script call is one).
    pub(super) commands: u64,
    /// The server's CPU time, user and system.
    pub(super) cpu_seconds: f64,
}

impl Target {
    pub(super) fn one(bridge: Bridge) -> Target {
        Target {
            replicas: vec![bridge],
            redis: None,
        }
    }

    pub(super) fn fleet(replicas: Vec<Bridge>, redis_url: &str) -> Target {
        let address = redis_url
            .rsplit('@')
            .next()
            .unwrap_or(redis_url)
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .to_owned();
        Target {
            replicas,
            redis: Some(address),
        }
    }

    pub(super) fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url.clone()).collect()
    }

    pub(super) fn is_fleet(&self) -> bool {
        self.replicas.len() > 1
    }

    pub(super) fn describe(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("{} (pid {})", r.url, r.pid))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every replica's CPU and memory, added up.
    pub(super) fn sample(&self) -> anyhow::Result<ProcSample> {
        let samples = self
            .replicas
            .iter()
            .map(Bridge::sample)
            .collect::<anyhow::Result<Vec<_>>>()?;
        ProcSample::total(&samples).ok_or_else(|| anyhow::anyhow!("no bridge"))
    }

    /// Every replica's `/metrics`, read as one.
    pub(super) async fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut all = Vec::new();
        for replica in &self.replicas {
            all.push(replica.metrics().await?);
        }
        Ok(Metrics::combined(all))
    }

    /// Waits (bounded) until no replica has a live call.
    pub(super) async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut idle = true;
        for replica in &self.replicas {
            idle &= replica.wait_idle(timeout).await;
        }
        idle
    }

    /// The fleet's Redis counters; `None` for one process (or a Redis that does not answer).
    pub(super) async fn redis_stats(&self) -> Option<RedisStats> {
        let address = self.redis.as_deref()?;
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"INFO stats\r\nINFO cpu\r\nQUIT\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let field = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse().ok())
        };
        Some(RedisStats {
            commands: field("total_commands_processed")? as u64,
            cpu_seconds: field("used_cpu_sys")? + field("used_cpu_user")?,
        })
    }

    pub(super) async fn stop(self) {
        for replica in self.replicas {
            replica.stop().await;
        }
    }
}
