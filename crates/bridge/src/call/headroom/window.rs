//! A delay histogram that is emptied at each reading: the p99 of what happened since the last
//! one, recorded with one relaxed atomic add (the call tasks record every frame into it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds; anything above the last one is reported as
/// [`BEYOND`]. Fine around the budgets that matter (1–10 ms), coarse beyond.
const BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 15_000, 20_000, 30_000, 50_000,
    100_000, 250_000, 1_000_000,
];
/// What a delay above the last bound reads as.
pub const BEYOND: Duration = Duration::from_secs(2);

/// Delays counted per bucket since the last [`DelayWindow::take`].
#[derive(Default)]
pub struct DelayWindow {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
}

impl DelayWindow {
    pub fn record(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BOUNDS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th percentile (the upper bound of its bucket) of the delays recorded since the
    /// last call, and empties the window. `None` with fewer than `at_least` delays: too few to
    /// say anything (they still leave the window).
    pub fn take(&self, at_least: u64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 || total < at_least {
            return None;
        }
        // The smallest delay that at least 99 % of the recorded ones do not exceed.
        let rank = total - total / 100;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(
                    BOUNDS_US
                        .get(bucket)
                        .map_or(BEYOND, |&bound| Duration::from_micros(bound)),
                );
            }
        }
        Some(BEYOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_p99_is_the_bound_of_its_bucket_and_a_reading_empties_the_window() {
        let window = DelayWindow::default();
        for _ in 0..990 {
            window.record(Duration::from_micros(300));
        }
        for _ in 0..10 {
            window.record(ms(7));
        }
        assert_eq!(window.take(1), Some(Duration::from_micros(500)));
        assert_eq!(window.take(1), None);

        for _ in 0..980 {
            window.record(ms(1));
        }
        for _ in 0..20 {
            window.record(ms(7));
        }
        assert_eq!(window.take(1), Some(ms(8)));
    }

    #[test]
    fn too_few_delays_say_nothing_and_huge_ones_read_as_beyond() {
        let window = DelayWindow::default();
        window.record(ms(3));
        assert_eq!(window.take(10), None);
        window.record(Duration::from_secs(30));
        assert_eq!(window.take(1), Some(BEYOND));
    }
}
