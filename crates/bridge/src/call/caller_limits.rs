//! Per-caller quotas on inbound calls: calls per number per clock hour and per day, and minutes
//! per day (UTC windows), checked at admission and counted when a call is admitted (calls) or
//! ends (minutes).
//!
//! With a fleet the counters live in Redis, shared by the replicas (fixed-window keys under the
//! fleet's prefix, see `fleet::counters`); without one, in this process, where a caller's
//! counters are dropped once their day is over. Calls the bridge places, and callers with a
//! hidden number, are not limited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tracing::debug;

use crate::config::CallerLimitSettings;
use crate::fleet::{Counter, Fleet, Taken};
use crate::ids::PhoneNumber;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// A Redis counter outlives its window by this much (clocks of replicas differ a little).
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// The quota a caller has used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    CallsPerHour,
    CallsPerDay,
    MinutesPerDay,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallsPerHour => "calls_per_hour",
            Self::CallsPerDay => "calls_per_day",
            Self::MinutesPerDay => "minutes_per_day",
        }
    }
}

/// Whether a caller may make another call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted and counted. `time_left`: what is left of the caller's minutes today, when
    /// they are limited (the call must not last longer).
    Admitted {
        time_left: Option<Duration>,
    },
    Refused(Quota),
}

/// The limits in the units counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    calls_per_hour: u64,
    calls_per_day: u64,
    seconds_per_day: u64,
}

impl Limits {
    fn of(settings: &CallerLimitSettings) -> Self {
        Self {
            calls_per_hour: settings.calls_per_hour.into(),
            calls_per_day: settings.calls_per_day.into(),
            seconds_per_day: u64::from(settings.minutes_per_day) * 60,
        }
    }

    fn none(&self) -> bool {
        self.calls_per_hour == 0 && self.calls_per_day == 0 && self.seconds_per_day == 0
    }

    /// What is left of `used` seconds today, when minutes are limited.
    fn time_left(&self, used: u64) -> Option<Duration> {
        (self.seconds_per_day > 0)
            .then(|| Duration::from_secs(self.seconds_per_day.saturating_sub(used)))
    }
}

/// The per-caller quotas of inbound calls; cheap to clone.
#[derive(Clone)]
pub struct CallerLimits {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    /// Where the counters live when `REDIS_URL` is set.
    fleet: Option<Fleet>,
    /// The counters without a fleet.
    local: Mutex<LocalCounters>,
}

impl CallerLimits {
    pub fn new(settings: &CallerLimitSettings, fleet: Option<Fleet>) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits: Limits::of(settings),
                fleet,
                local: Mutex::default(),
            }),
        }
    }

    /// Checks the caller's quotas for an inbound call at `now` and, when it may go ahead, counts
    /// it. With a fleet whose Redis cannot be asked (bounded by the fleet's command timeout) the
    /// call is admitted uncounted: a caller is never refused because Redis is down.
    pub async fn admit(&self, caller: &PhoneNumber, now: SystemTime) -> Verdict {
        let limits = self.inner.limits;
        if limits.none() {
            return Verdict::Admitted { time_left: None };
        }
        let secs = unix_seconds(now);
        let Some(fleet) = &self.inner.fleet else {
            return self.inner.local.lock().admit(caller, secs, &limits);
        };
        let (hour, day) = (secs / HOUR, secs / DAY);
        let quotas = [
            (
                Quota::CallsPerHour,
                limits.calls_per_hour,
                1,
                format!("h{hour}"),
                HOUR,
            ),
            (
                Quota::CallsPerDay,
                limits.calls_per_day,
                1,
                format!("d{day}"),
                DAY,
            ),
            (
                Quota::MinutesPerDay,
                limits.seconds_per_day,
                0,
                format!("d{day}"),
                DAY,
            ),
        ];
        let (quotas, counters): (Vec<Quota>, Vec<Counter>) = quotas
            .into_iter()
            .filter(|(_, limit, ..)| *limit > 0)
            .map(|(quota, limit, add, window, length)| {
                let counter = Counter {
                    name: counter_name(caller, quota, &window),
                    limit,
                    add,
                    expiry: Duration::from_secs(length) + EXPIRY_MARGIN,
                };
                (quota, counter)
            })
            .unzip();
        match fleet.take(&counters).await {
            Ok(Taken::Full(index)) => match quotas.get(index) {
                Some(quota) => Verdict::Refused(*quota),
                None => Verdict::Admitted { time_left: None },
            },
            Ok(Taken::Added(values)) => {
                let used = quotas
                    .iter()
                    .position(|q| *q == Quota::MinutesPerDay)
                    .and_then(|i| values.get(i).copied())
                    .unwrap_or(0);
                Verdict::Admitted {
                    time_left: limits.time_left(used),
                }
            }
            Err(err) => {
                debug!(%err, "caller quotas not checked (fleet degraded); call admitted");
                Verdict::Admitted { time_left: None }
            }
        }
    }

    /// Counts `talked` (an ended inbound call's answered time) toward the caller's minutes of
    /// the day of `now`. With a fleet whose Redis cannot be asked, the time is not counted.
    pub async fn record(&self, caller: &PhoneNumber, talked: Duration, now: SystemTime) {
        let limits = self.inner.limits;
        if limits.seconds_per_day == 0 || talked.is_zero() {
            return;
        }
        let secs = unix_seconds(now);
        let Some(fleet) = &self.inner.fleet else {
            self.inner
                .local
                .lock()
                .record(caller, secs, talked.as_secs());
            return;
        };
        let counter = Counter {
            name: counter_name(caller, Quota::MinutesPerDay, &format!("d{}", secs / DAY)),
            limit: 0,
            add: talked.as_secs(),
            expiry: Duration::from_secs(DAY) + EXPIRY_MARGIN,
        };
        if let Err(err) = fleet.take(&[counter]).await {
            debug!(%err, "a call's minutes were not counted (fleet degraded)");
        }
    }
}

fn counter_name(caller: &PhoneNumber, quota: Quota, window: &str) -> String {
    let what = match quota {
        Quota::CallsPerHour | Quota::CallsPerDay => "calls",
        Quota::MinutesPerDay => "seconds",
    };
    format!("caller:{}:{what}:{window}", caller.as_str())
}

fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One caller's use in the current windows.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    hour: u64,
    calls_this_hour: u64,
    day: u64,
    calls_today: u64,
    seconds_today: u64,
}

impl Usage {
    /// Starts the windows of `secs` afresh where they have rolled over.
    fn roll(&mut self, secs: u64) {
        let (hour, day) = (secs / HOUR, secs / DAY);
        if self.hour != hour {
            self.hour = hour;
            self.calls_this_hour = 0;
        }
        if self.day != day {
            self.day = day;
            self.calls_today = 0;
            self.seconds_today = 0;
        }
    }
}

/// The counters of one process (sans-IO: the time is an argument). Bounded: callers whose day
/// is over are dropped when the day changes.
#[derive(Default)]
struct LocalCounters {
    callers: HashMap<PhoneNumber, Usage>,
    /// The day the map was last pruned.
    pruned: u64,
}

impl LocalCounters {
    fn admit(&mut self, caller: &PhoneNumber, secs: u64, limits: &Limits) -> Verdict {
        self.prune(secs);
        let usage = self.usage(caller, secs);
        let full = |used: u64, limit: u64| limit > 0 && used >= limit;
        let refused = if full(usage.calls_this_hour, limits.calls_per_hour) {
            Some(Quota::CallsPerHour)
        } else if full(usage.calls_today, limits.calls_per_day) {
            Some(Quota::CallsPerDay)
        } else if full(usage.seconds_today, limits.seconds_per_day) {
            Some(Quota::MinutesPerDay)
        } else {
            None
        };
        if let Some(quota) = refused {
            return Verdict::Refused(quota);
        }
        usage.calls_this_hour += 1;
        usage.calls_today += 1;
        Verdict::Admitted {
            time_left: limits.time_left(usage.seconds_today),
        }
    }

    fn record(&mut self, caller: &PhoneNumber, secs: u64, seconds: u64) {
        self.prune(secs);
        self.usage(caller, secs).seconds_today += seconds;
    }

    fn usage(&mut self, caller: &PhoneNumber, secs: u64) -> &mut Usage {
        let usage = self.callers.entry(caller.clone()).or_default();
        usage.roll(secs);
        usage
    }

    fn prune(&mut self, secs: u64) {
        let day = secs / DAY;
        if self.pruned != day {
            self.pruned = day;
            self.callers.retain(|_, usage| usage.day == day);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_hour: u64, per_day: u64, minutes: u64) -> Limits {
        Limits {
            calls_per_hour: per_hour,
            calls_per_day: per_day,
            seconds_per_day: minutes * 60,
        }
    }

    fn caller(n: u32) -> PhoneNumber {
        PhoneNumber::new(format!("44770090{n:04}"))
    }

    /// 2026-12-07 10:00:00 UTC: a day and an hour begin.
    const MORNING: u64 = 1_796_637_600;

    fn admitted(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Admitted { .. })
    }

    #[test]
    fn the_call_past_the_hourly_quota_is_refused_until_the_next_hour() {
        let mut counters = LocalCounters::default();
        let limits = limits(2, 0, 0);
        assert!(admitted(counters.admit(&caller(1), MORNING, &limits)));
        assert!(admitted(counters.admit(&caller(1), MORNING + 60, &limits)));
        assert_eq!(
            counters.admit(&caller(1), MORNING + 3599, &limits),
            Verdict::Refused(Quota::CallsPerHour)
        );
        // Another caller has quotas of its own.
        assert!(admitted(counters.admit(
            &caller(2),
            MORNING + 3599,
            &limits
        )));
        // The window rolls over at the hour.
        assert!(admitted(counters.admit(
            &caller(1),
            MORNING + 3600,
            &limits
        )));
    }

    #[test]
    fn the_daily_quota_holds_across_hours_and_resets_the_next_day() {
        let mut counters = LocalCounters::default();
        let limits = limits(0, 3, 0);
        for hour in 0..3 {
            assert!(admitted(counters.admit(
                &caller(1),
                MORNING + hour * HOUR,
                &limits
            )));
        }
        assert_eq!(
            counters.admit(&caller(1), MORNING + 5 * HOUR, &limits),
            Verdict::Refused(Quota::CallsPerDay)
        );
        let tomorrow = MORNING - 10 * HOUR + DAY;
        assert!(admitted(counters.admit(&caller(1), tomorrow, &limits)));
    }

    #[test]
    fn minutes_left_shrink_with_each_call_and_none_left_refuses() {
        let mut counters = LocalCounters::default();
        let limits = limits(0, 0, 10);
        assert_eq!(
            counters.admit(&caller(1), MORNING, &limits),
            Verdict::Admitted {
                time_left: Some(Duration::from_secs(600))
            }
        );
        counters.record(&caller(1), MORNING + 400, 400);
        assert_eq!(
            counters.admit(&caller(1), MORNING + 500, &limits),
            Verdict::Admitted {
                time_left: Some(Duration::from_secs(200))
            }
        );
        counters.record(&caller(1), MORNING + 800, 200);
        assert_eq!(
            counters.admit(&caller(1), MORNING + 900, &limits),
            Verdict::Refused(Quota::MinutesPerDay)
        );
        // A refused call is not counted; the next day starts with every minute.
        assert_eq!(
            counters.admit(&caller(1), MORNING - 10 * HOUR + DAY, &limits),
            Verdict::Admitted {
                time_left: Some(Duration::from_secs(600))
            }
        );
    }

    #[test]
    fn callers_of_past_days_are_dropped() {
        let mut counters = LocalCounters::default();
        let limits = limits(5, 0, 0);
        for n in 0..50 {
            counters.admit(&caller(n), MORNING, &limits);
        }
        assert_eq!(counters.callers.len(), 50);
        counters.admit(&caller(99), MORNING + DAY, &limits);
        assert_eq!(counters.callers.len(), 1);
    }

    #[tokio::test]
    async fn without_limits_nothing_is_counted_or_refused() {
        let settings = CallerLimitSettings {
            calls_per_hour: 0,
            calls_per_day: 0,
            minutes_per_day: 0,
            ..CallerLimitSettings::default()
        };
        let quotas = CallerLimits::new(&settings, None);
        let now = UNIX_EPOCH + Duration::from_secs(MORNING);
        for _ in 0..100 {
            assert_eq!(
                quotas.admit(&caller(1), now).await,
                Verdict::Admitted { time_left: None }
            );
        }
        assert!(quotas.inner.local.lock().callers.is_empty());
    }

    mod shared {
        //! The shared counters against a real Redis (`TEST_REDIS_URL`, default the local one),
        //! under a prefix of their own, as `fleet::tests` does.

        use secrecy::SecretString;

        use super::*;
        use crate::fleet::FleetSettings;
        use crate::metrics::Metrics;

        fn fleet(prefix: &str, replica: &str) -> Fleet {
            let url = std::env::var("TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let settings = FleetSettings {
                url: SecretString::from(url),
                prefix: prefix.to_owned(),
                replica: replica.to_owned(),
            };
            Fleet::new(&settings, Metrics::new()).expect("fleet")
        }

        fn settings(per_hour: u32, per_day: u32, minutes: u32) -> CallerLimitSettings {
            CallerLimitSettings {
                calls_per_hour: per_hour,
                calls_per_day: per_day,
                minutes_per_day: minutes,
                ..CallerLimitSettings::default()
            }
        }

        #[tokio::test]
        async fn replicas_share_one_callers_quotas_and_windows_roll_over() {
            let prefix = format!("wvb-test-limits-{}", uuid::Uuid::new_v4().simple());
            let a = CallerLimits::new(&settings(2, 3, 0), Some(fleet(&prefix, "a")));
            let b = CallerLimits::new(&settings(2, 3, 0), Some(fleet(&prefix, "b")));
            let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
            assert!(admitted(a.admit(&caller(1), at(MORNING)).await));
            assert!(admitted(b.admit(&caller(1), at(MORNING + 10)).await));
            // The third call this hour is refused on either replica, and not counted.
            assert_eq!(
                a.admit(&caller(1), at(MORNING + 20)).await,
                Verdict::Refused(Quota::CallsPerHour)
            );
            assert_eq!(
                b.admit(&caller(1), at(MORNING + 30)).await,
                Verdict::Refused(Quota::CallsPerHour)
            );
            // The next hour: the hourly window is new, the day has one call left.
            assert!(admitted(b.admit(&caller(1), at(MORNING + HOUR)).await));
            assert_eq!(
                a.admit(&caller(1), at(MORNING + HOUR + 1)).await,
                Verdict::Refused(Quota::CallsPerDay)
            );
            assert!(admitted(a.admit(&caller(2), at(MORNING + HOUR + 1)).await));
        }

        #[tokio::test]
        async fn minutes_recorded_on_one_replica_shorten_the_next_call_on_another() {
            let prefix = format!("wvb-test-limits-{}", uuid::Uuid::new_v4().simple());
            let a = CallerLimits::new(&settings(0, 0, 10), Some(fleet(&prefix, "a")));
            let b = CallerLimits::new(&settings(0, 0, 10), Some(fleet(&prefix, "b")));
            let now = UNIX_EPOCH + Duration::from_secs(MORNING);
            assert_eq!(
                a.admit(&caller(1), now).await,
                Verdict::Admitted {
                    time_left: Some(Duration::from_secs(600))
                }
            );
            a.record(&caller(1), Duration::from_secs(420), now).await;
            assert_eq!(
                b.admit(&caller(1), now).await,
                Verdict::Admitted {
                    time_left: Some(Duration::from_secs(180))
                }
            );
            b.record(&caller(1), Duration::from_secs(180), now).await;
            assert_eq!(
                a.admit(&caller(1), now).await,
                Verdict::Refused(Quota::MinutesPerDay)
            );
        }

        #[tokio::test]
        async fn a_caller_is_admitted_when_redis_cannot_be_reached() {
            let settings_ = settings(1, 1, 1);
            let fleet = Fleet::new(
                &FleetSettings {
                    // Nothing listens there: every command fails.
                    url: SecretString::from("redis://127.0.0.1:1".to_owned()),
                    prefix: "wvb-test-limits-down".to_owned(),
                    replica: "a".to_owned(),
                },
                Metrics::new(),
            )
            .expect("fleet");
            let quotas = CallerLimits::new(&settings_, Some(fleet));
            let now = UNIX_EPOCH + Duration::from_secs(MORNING);
            for _ in 0..3 {
                assert_eq!(
                    quotas.admit(&caller(1), now).await,
                    Verdict::Admitted { time_left: None }
                );
            }
        }
    }
}
