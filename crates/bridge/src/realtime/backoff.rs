//! When to try opening a session again (§10.4), shortened for a phone call: the caller is
//! listening to silence meanwhile, so the first retry goes almost at once and only later ones
//! back off. A provider's `Retry-After` wins over the schedule.

use std::time::Duration;

/// The first attempt waits up to this long, so that calls whose sessions all dropped at once
/// (a provider restart) do not all reconnect in the same millisecond.
const FIRST_SPREAD: Duration = Duration::from_millis(50);
/// The second attempt waits about this long; each later one twice as long as the one before.
const SECOND: Duration = Duration::from_millis(250);
/// No wait is longer than this.
const LONGEST: Duration = Duration::from_secs(4);

/// The attempts of one reconnection (or of opening a call's first session).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Attempts started so far.
    attempts: u32,
    max_attempts: u32,
}

impl Backoff {
    pub fn new(max_attempts: u32) -> Self {
        Self {
            attempts: 0,
            max_attempts,
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt (counted as started), or `None` when every attempt
    /// has been used. `retry_after` is what the provider asked for with its last refusal.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.attempts >= self.max_attempts {
            return None;
        }
        self.attempts += 1;
        let scheduled = delay_before(self.attempts, rand::random::<f64>());
        Some(retry_after.map_or(scheduled, |asked| asked.max(scheduled)))
    }
}

/// The wait before attempt `attempt` (1-based), `unit` a random number in [0, 1): the first
/// within [0, 50 ms), then 250 ms doubling up to 4 s, each shortened by up to a quarter.
pub fn delay_before(attempt: u32, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    if attempt <= 1 {
        return FIRST_SPREAD.mul_f64(unit);
    }
    let doubled = SECOND.saturating_mul(1 << (attempt - 2).min(8));
    doubled.min(LONGEST).mul_f64(1.0 - 0.25 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_is_almost_immediate_and_later_ones_double_up_to_a_cap() {
        assert_eq!(delay_before(1, 0.0), Duration::ZERO);
        assert!(delay_before(1, 0.999) < Duration::from_millis(50));
        assert_eq!(delay_before(2, 0.0), Duration::from_millis(250));
        assert_eq!(delay_before(3, 0.0), Duration::from_millis(500));
        assert_eq!(delay_before(4, 0.0), Duration::from_secs(1));
        assert_eq!(delay_before(6, 0.0), Duration::from_secs(4));
        assert_eq!(delay_before(30, 0.0), Duration::from_secs(4));
        // Jitter shortens a wait by at most a quarter.
        assert_eq!(delay_before(3, 1.0), Duration::from_millis(375));
    }

    #[test]
    fn attempts_run_out_and_retry_after_is_honoured() {
        let mut backoff = Backoff::new(3);
        assert!(backoff.next_delay(None).is_some());
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert!(backoff.next_delay(None).is_some());
        assert_eq!(backoff.next_delay(None), None);
        assert_eq!(backoff.attempts(), 3);
    }
}
