//! Fixed-window counters shared by the replicas (per-caller quotas, `call::caller_limits`):
//! one key per counter and window, under the fleet's prefix, expiring after its window.
//!
//! A take checks every counter against its limit and adds to all of them, or to none, in one
//! atomic script, so two replicas admitting calls of one caller at once cannot both pass the
//! last unit of a quota.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Fleet, FleetError};

/// KEYS: the counters; ARGV per counter: limit (0: none), amount to add, expiry ms.
/// Answers `{0, value…}` with the values after adding, or `{i}` when counter `i` (1-based) is
/// at its limit already, and nothing was added.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 2])
  local value = tonumber(redis.call('GET', key) or '0')
  if limit > 0 and value >= limit then
    return {i}
  end
end
local answer = {0}
for i, key in ipairs(KEYS) do
  local add = tonumber(ARGV[3 * i - 1])
  if add > 0 then
    answer[i + 1] = redis.call('INCRBY', key, add)
    redis.call('PEXPIRE', key, ARGV[3 * i])
  else
    answer[i + 1] = tonumber(redis.call('GET', key) or '0')
  end
end
return answer
",
    )
});

/// One counter of a take.
#[derive(Clone, Debug)]
pub struct Counter {
    /// The counter's name under the prefix; it names its window (e.g. the hour's number).
    pub name: String,
    /// The take is refused when the counter is at this already; 0: no limit.
    pub limit: u64,
    /// Added when the take goes through (0: only read).
    pub add: u64,
    /// How long the key lives after a write (at least to the end of its window).
    pub expiry: Duration,
}

/// What became of a take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Added: each counter's value afterwards, in the order given.
    Added(Vec<u64>),
    /// The counter at this index was at its limit: nothing was added.
    Full(usize),
}

impl Fleet {
    /// Adds to the counters unless one is at its limit (see [`TAKE`]). Bounded by the fleet's
    /// command timeout; `Err` when Redis could not be asked.
    pub async fn take(&self, counters: &[Counter]) -> Result<Taken, FleetError> {
        let mut invocation = TAKE.prepare_invoke();
        for counter in counters {
            invocation
                .key(self.inner.keys.counter(&counter.name))
                .arg(counter.limit)
                .arg(counter.add)
                .arg(counter.expiry.as_millis() as u64);
        }
        let answer: Vec<i64> = self
            .run("counters", invocation.invoke_async(&mut self.conn()))
            .await?;
        Ok(match answer.split_first() {
            Some((0, values)) => Taken::Added(values.iter().map(|v| *v as u64).collect()),
            Some((full, _)) => Taken::Full((*full as usize).saturating_sub(1)),
            None => Taken::Added(Vec::new()),
        })
    }
}
