//! Loss protection of the outgoing stream, sans-IO: the phone's RTCP loss reports in, the
//! encoder's in-band FEC settings out.
//!
//! Opus in-band FEC puts a low-rate copy of each frame into the next packet, so the phone can
//! rebuild a lost frame instead of concealing it. The copy costs bits the frame itself no longer
//! gets, so it is only worth sending while the phone loses packets. [`LossProtection`] turns it on
//! at the first report of real loss, plans for the loss reported (at once when it rises, slowly
//! when it falls), and turns it off again once the reports have been loss-free for a while.
//! It reads no clock: each report comes with the instant it arrived.

use std::time::{Duration, Instant};

use super::codec::{EncoderSettings, FecSettings};
use super::peer::LossReport;

/// Reported loss below this (3 %, in 256ths) counts as none: at 2 % concealment alone scored
/// better than FEC, which takes bits from every frame (docs/BENCHMARKS.md, "Downlink FEC driven
/// by RTCP loss reports").
const LOSS_FLOOR: u8 = 8;
/// Reported loss above this (50 %) is taken as this much: a phone that loses more hears little
/// whatever is sent, and the expected loss is capped anyway.
const LOSS_CEILING: f64 = 0.5;
/// After the loss reported falls, the estimate halves its distance to the new value in this time.
const FALL_HALF_LIFE: Duration = Duration::from_secs(5);
/// The expected loss libopus is given while protecting, in percent, whatever the estimate: at
/// 20 kbit/s it sends FEC only from 6 % on (see [`EncoderSettings::inband_fec`]), and 10 % scored
/// best at 2, 5 and 10 % loss (higher values starve the frames themselves).
const MIN_EXPECTED_LOSS: i32 = 10;
const MAX_EXPECTED_LOSS: i32 = 25;
/// Expected loss per percent of estimated loss.
const EXPECTED_PER_REPORTED: f64 = 1.0;
/// Default for [`LossProtectionSettings::off_after`].
pub const DEFAULT_OFF_AFTER: Duration = Duration::from_secs(10);

/// What the controller is told once per call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossProtectionSettings {
    /// The configured encoder settings: what the stream uses while it is not protected.
    pub plain: EncoderSettings,
    /// The most the phone accepts (the offer's `maxaveragebitrate`, else 20 kbit/s): the bitrate
    /// while protecting, so the copy has room.
    pub max_bitrate_bps: i32,
    /// Protection ends at the first loss-free report this long after the last one with loss.
    pub off_after: Duration,
}

/// Decides the encoder's FEC settings from the far end's reception reports about our stream.
#[derive(Debug)]
pub struct LossProtection {
    settings: LossProtectionSettings,
    /// Our outgoing SSRC: reports about any other stream are ignored.
    ssrc: u32,
    /// Estimated loss (0..=1): follows a rise at once, a fall with [`FALL_HALF_LIFE`].
    estimate: f64,
    /// The last report used: its arrival and its highest sequence number.
    last: Option<(Instant, u32)>,
    /// When a report last stated loss at or above [`LOSS_FLOOR`].
    last_loss_at: Option<Instant>,
    current: FecSettings,
}

impl LossProtection {
    /// A controller for the stream `ssrc`; it starts unprotected.
    pub fn new(settings: LossProtectionSettings, ssrc: u32) -> Self {
        Self {
            current: unprotected(settings.plain),
            settings,
            ssrc,
            estimate: 0.0,
            last: None,
            last_loss_at: None,
        }
    }

    /// The settings the encoder should have now.
    pub fn current(&self) -> FecSettings {
        self.current
    }

    /// Whether the stream is protected now.
    pub fn protecting(&self) -> bool {
        self.current.inband_fec
    }

    /// The estimated loss, in percent.
    pub fn estimated_loss_percent(&self) -> f64 {
        self.estimate * 100.0
    }

    /// The settings the encoder needs to start using now, if `report` (arrived at `now`) changes
    /// them. Ignored: reports about another stream, and reports not newer than the last one
    /// used (a duplicate, or one overtaken on the way).
    pub fn on_report(&mut self, now: Instant, report: &LossReport) -> Option<FecSettings> {
        if report.ssrc != self.ssrc {
            return None;
        }
        let elapsed = match self.last {
            // Newer means a larger extended sequence number, within half the space (RFC 3550).
            Some((_, highest)) if (report.highest_sequence.wrapping_sub(highest) as i32) <= 0 => {
                return None;
            }
            Some((at, _)) => now.saturating_duration_since(at),
            None => Duration::ZERO,
        };
        self.last = Some((now, report.highest_sequence));

        let lossy = report.fraction_lost >= LOSS_FLOOR;
        let reported = if lossy {
            (f64::from(report.fraction_lost) / 256.0).min(LOSS_CEILING)
        } else {
            0.0
        };
        if reported >= self.estimate {
            self.estimate = reported;
        } else {
            let keep = 0.5f64.powf(elapsed.as_secs_f64() / FALL_HALF_LIFE.as_secs_f64());
            self.estimate = reported + (self.estimate - reported) * keep;
        }
        if lossy {
            self.last_loss_at = Some(now);
        }

        let quiet = self
            .last_loss_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.settings.off_after);
        let next = if quiet {
            self.estimate = 0.0;
            unprotected(self.settings.plain)
        } else {
            FecSettings {
                inband_fec: true,
                expected_loss_percent: expected_loss(self.estimate),
                bitrate_bps: self.settings.max_bitrate_bps,
            }
        };
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }
}

/// The configured settings without FEC: no bits spent on a copy nobody needs.
fn unprotected(plain: EncoderSettings) -> FecSettings {
    FecSettings {
        inband_fec: false,
        expected_loss_percent: 0,
        bitrate_bps: plain.bitrate_bps,
    }
}

/// The expected loss libopus is told for an estimated loss (0..=1), in whole percent.
fn expected_loss(estimate: f64) -> i32 {
    let percent = (estimate * 100.0 * EXPECTED_PER_REPORTED).ceil() as i32;
    percent.clamp(MIN_EXPECTED_LOSS, MAX_EXPECTED_LOSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5679;
    const SECOND: Duration = Duration::from_secs(1);

    fn controller() -> LossProtection {
        LossProtection::new(
            LossProtectionSettings {
                plain: EncoderSettings::default(),
                max_bitrate_bps: 20_000,
                off_after: DEFAULT_OFF_AFTER,
            },
            SSRC,
        )
    }

    /// Feeds one report a second, each with `percent` loss; returns the last change, if any.
    struct Reports {
        controller: LossProtection,
        start: Instant,
        second: u32,
    }

    impl Reports {
        fn new() -> Self {
            Self {
                controller: controller(),
                start: Instant::now(),
                second: 0,
            }
        }

        fn fraction(&mut self, fraction_lost: u8) -> Option<FecSettings> {
            self.second += 1;
            let report = LossReport {
                ssrc: SSRC,
                fraction_lost,
                cumulative_lost: 0,
                highest_sequence: 50 * self.second,
                jitter: 0,
                last_sender_report: 0,
            };
            self.controller
                .on_report(self.start + SECOND * self.second, &report)
        }

        fn percent(&mut self, percent: u32) -> Option<FecSettings> {
            self.fraction((percent * 256 / 100) as u8)
        }
    }

    #[test]
    fn a_stream_without_loss_stays_unprotected_and_spends_no_bits_on_fec() {
        let mut reports = Reports::new();
        let start = reports.controller.current();
        assert!(!start.inband_fec);
        assert_eq!(start.expected_loss_percent, 0);
        assert_eq!(start.bitrate_bps, EncoderSettings::default().bitrate_bps);
        for _ in 0..30 {
            assert_eq!(reports.percent(0), None);
        }
        // Loss below the floor (one or two packets in a hundred) is not worth the copy either.
        assert_eq!(reports.percent(1), None);
        assert_eq!(reports.percent(2), None);
        assert!(!reports.controller.protecting());
    }

    #[test]
    fn reported_loss_turns_fec_on_at_once_planning_for_that_loss() {
        let mut reports = Reports::new();
        let on = reports.percent(10).expect("switched on");
        assert!(on.inband_fec);
        assert_eq!(on.expected_loss_percent, 10);
        assert_eq!(on.bitrate_bps, 20_000);
        // A little loss still gets the least expected loss at which libopus sends FEC.
        let mut reports = Reports::new();
        let on = reports.percent(4).expect("switched on");
        assert_eq!(on.expected_loss_percent, MIN_EXPECTED_LOSS);
        // A rise is followed at once.
        let higher = reports.percent(20).expect("raised");
        assert_eq!(higher.expected_loss_percent, 20);
    }

    #[test]
    fn protection_falls_slowly_and_ends_only_after_a_sustained_loss_free_period() {
        let mut reports = Reports::new();
        reports.percent(20).expect("on");
        // Loss-free reports: the expected loss comes down step by step, FEC stays on.
        let mut expected = vec![20];
        for _ in 0..9 {
            if let Some(settings) = reports.percent(0) {
                assert!(settings.inband_fec, "still protecting");
                expected.push(settings.expected_loss_percent);
            }
        }
        assert!(reports.controller.protecting());
        assert!(
            expected.windows(2).all(|pair| pair[1] < pair[0]),
            "{expected:?}"
        );
        assert!(
            *expected.last().expect("some") >= MIN_EXPECTED_LOSS,
            "{expected:?}"
        );
        // Ten seconds after the last loss: off, at the configured bitrate.
        let off = reports.percent(0).expect("switched off");
        assert!(!off.inband_fec);
        assert_eq!(off.expected_loss_percent, 0);
        assert_eq!(reports.controller.estimated_loss_percent(), 0.0);
    }

    #[test]
    fn loss_now_and_then_keeps_protection_on_without_flapping() {
        let mut reports = Reports::new();
        reports.percent(5).expect("on");
        let mut switches = 0;
        for second in 0..60 {
            let percent = if second % 8 == 0 { 5 } else { 0 };
            if let Some(settings) = reports.percent(percent) {
                assert!(settings.inband_fec, "second {second}: switched off");
                switches += 1;
            }
        }
        assert!(reports.controller.protecting());
        assert!(switches <= 10, "{switches} changes in a minute");
    }

    #[test]
    fn a_report_of_total_loss_is_capped_not_believed_literally() {
        let mut reports = Reports::new();
        let on = reports.fraction(255).expect("on");
        assert!(on.inband_fec);
        assert_eq!(on.expected_loss_percent, MAX_EXPECTED_LOSS);
        assert!(reports.controller.estimated_loss_percent() <= 50.0);
    }

    #[test]
    fn reports_about_another_stream_duplicates_and_stale_ones_are_ignored() {
        let mut controller = controller();
        let now = Instant::now();
        let lossy = LossReport {
            ssrc: SSRC ^ 1,
            fraction_lost: 64,
            cumulative_lost: 100,
            highest_sequence: 1_000,
            jitter: 0,
            last_sender_report: 0,
        };
        assert_eq!(controller.on_report(now, &lossy), None);
        assert!(!controller.protecting());

        let ours = LossReport {
            ssrc: SSRC,
            fraction_lost: 0,
            ..lossy
        };
        assert_eq!(controller.on_report(now, &ours), None);
        // The same report again, and one older than it: ignored, whatever they say.
        let duplicate = LossReport {
            fraction_lost: 64,
            ..ours
        };
        assert_eq!(controller.on_report(now + SECOND, &duplicate), None);
        let stale = LossReport {
            highest_sequence: 900,
            ..duplicate
        };
        assert_eq!(controller.on_report(now + SECOND, &stale), None);
        assert!(!controller.protecting());
        // Across the wrap of the extended sequence number, a newer report still counts.
        let newer = LossReport {
            highest_sequence: 1_050,
            ..duplicate
        };
        assert!(controller.on_report(now + 2 * SECOND, &newer).is_some());
        let mut wrapping = self::controller();
        let before = LossReport {
            highest_sequence: u32::MAX - 10,
            ..ours
        };
        assert_eq!(wrapping.on_report(now, &before), None);
        let after = LossReport {
            highest_sequence: 40,
            ..duplicate
        };
        assert!(wrapping.on_report(now + SECOND, &after).is_some());
    }

    #[test]
    fn protection_never_asks_for_more_than_the_phone_accepts() {
        let mut controller = LossProtection::new(
            LossProtectionSettings {
                plain: EncoderSettings {
                    bitrate_bps: 32_000,
                    ..EncoderSettings::default()
                },
                max_bitrate_bps: 16_000,
                off_after: DEFAULT_OFF_AFTER,
            },
            SSRC,
        );
        let report = LossReport {
            ssrc: SSRC,
            fraction_lost: 26,
            cumulative_lost: 5,
            highest_sequence: 50,
            jitter: 0,
            last_sender_report: 0,
        };
        let on = controller.on_report(Instant::now(), &report).expect("on");
        assert_eq!(on.bitrate_bps, 16_000);
    }

    #[test]
    fn a_report_arriving_with_an_earlier_instant_does_not_panic() {
        let mut reports = Reports::new();
        reports.percent(10).expect("on");
        let report = LossReport {
            ssrc: SSRC,
            fraction_lost: 0,
            cumulative_lost: 0,
            highest_sequence: 10_000,
            jitter: 0,
            last_sender_report: 0,
        };
        let earlier = reports.start;
        assert_eq!(reports.controller.on_report(earlier, &report), None);
        assert!(reports.controller.protecting());
    }
}
