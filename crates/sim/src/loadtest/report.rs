//! What each level measured, the fits across levels, and the table and CSV they are shown as.

use std::fmt::Write as _;

/// Everything measured at one level of load.
#[derive(Debug, Clone, Default)]
pub struct LevelResult {
    pub calls: usize,
    pub admitted: usize,
    pub refused: usize,
    pub failed: usize,
    /// Webhook sent → `accept` at the Graph double, ms, per admitted call.
    pub setup_ms: Vec<f64>,
    /// Webhook sent → its HTTP answer, and → `pre_accept` at the Graph double, ms.
    pub webhook_answered_ms: Vec<f64>,
    pub pre_accept_ms: Vec<f64>,
    /// Marker sent by a phone → seen by the AI double, ms.
    pub uplink_ms: Vec<f64>,
    /// Echo sent by the AI double → heard by the phone, ms.
    pub downlink_ms: Vec<f64>,
    /// Markers sent (while the call was up) with no arrival at the AI double.
    pub uplink_markers_lost: usize,
    /// Echoes sent with no arrival at the phone.
    pub downlink_markers_lost: usize,
    /// Phone markers whose echo was never heard back.
    pub round_trips_missing: usize,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Downlink RTP sequence gaps at the phones.
    pub downlink_lost: u64,
    /// Uplink frames the bridge had to conceal (its own counter).
    pub uplink_concealed: u64,
    pub late: u64,
    pub bunched: u64,
    pub max_gap_ms: f64,
    pub jitter_ms: f64,
    /// The bridge's own count of late pacer ticks.
    pub late_pacer_ticks: u64,
    /// Frames the bridge sent more than 10 ms after their slot (its own histogram): where a
    /// phone's late frame started.
    pub frames_sent_late: u64,
    /// p99 of how late the bridge sent the admitted calls' frames during the hold (its own
    /// histogram, interpolated), ms; `None` without frames.
    pub send_delay_p99_ms: Option<f64>,
    /// Bridge CPU during the hold, in cores (1.0 = one core busy).
    pub bridge_cores: f64,
    /// Bridge RSS at the end of the hold, and once every call of the level had ended.
    pub rss_mib: f64,
    pub rss_after_mib: f64,
    /// The harness's own CPU during the hold.
    pub harness_cores: f64,
    /// Times the harness's runtime ran a timer 10 ms or more late during the hold, and the
    /// latest it ran one: the phones time arrivals on that runtime.
    pub harness_stalls: u64,
    pub harness_max_lag_ms: f64,
    /// The most steal time one CPU had during the hold, and within one 100 ms window, in ms:
    /// the hypervisor ran something else while this machine was ready to run.
    pub steal_ms: f64,
    pub steal_peak_ms: f64,
    /// Audio the AI double received and sent over the level's calls, in samples: what share of
    /// the time the bridge had AI audio to encode.
    pub ai_samples_in: u64,
    pub ai_samples_out: u64,
    /// A fleet: the events forwarded to a call's replica (every terminate, here), and how long
    /// the forwarding took (the owners' histogram), ms.
    pub forwarded: u64,
    pub forward_p50_ms: f64,
    pub forward_p99_ms: f64,
    /// A fleet: commands the replicas sent Redis over the level, and the Redis server's CPU.
    pub redis_commands: u64,
    pub redis_cpu_ms: f64,
    pub problems: Vec<String>,
}

impl LevelResult {
    /// Bridge CPU per admitted call, in % of a core (`None` with no call admitted).
    pub fn cpu_percent_per_call(&self) -> Option<f64> {
        (self.admitted > 0).then(|| self.bridge_cores * 100.0 / self.admitted as f64)
    }

    /// The share of the caller's time the AI double was sending audio back (`None` if it
    /// received none).
    pub fn ai_audio_share(&self) -> Option<f64> {
        (self.ai_samples_in > 0).then(|| self.ai_samples_out as f64 / self.ai_samples_in as f64)
    }

    /// Audio lost anywhere, or a call that failed.
    pub fn healthy(&self) -> bool {
        self.failed == 0
            && self.uplink_markers_lost == 0
            && self.downlink_markers_lost == 0
            && self.round_trips_missing == 0
            && self.downlink_lost == 0
            && self.uplink_concealed == 0
            && self.problems.is_empty()
    }
}

/// The `p`-th percentile (0..=100) by nearest rank; `NaN` for no data.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Least-squares line `y = intercept + slope × x`.
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
}

pub fn linear_fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    Some(Fit {
        slope,
        intercept: mean_y - slope * mean_x,
    })
}

/// The cost of one call's codec work alone, measured in the same run.
#[derive(Debug, Clone, Copy)]
pub struct CodecCost {
    /// One decode plus one encode of a 20 ms frame, µs.
    pub frame_us: f64,
}

/// One call's codec work measured alone, in the parts the bridge's own work is made of: every
/// uplink frame is decoded; a downlink frame is either AI audio, encoded at the configured
/// complexity, or (in the AI's pauses) the bridge's silence, which its stream encoder encodes
/// (at full complexity, then at pause complexity once the pause has settled) until its packets
/// repeat, and from then on replays.
#[derive(Debug, Clone, Copy)]
pub struct CodecParts {
    /// One decode of a phone packet, µs.
    pub decode_us: f64,
    /// One encode of a frame of AI audio (the echoed speech), µs.
    pub voice_encode_us: f64,
    /// All the encoding of a pause before the replay starts, µs.
    pub pause_start_us: f64,
    /// How many frames of a pause that is.
    pub pause_start_frames: f64,
    /// One replayed frame of a pause, µs.
    pub pause_replay_us: f64,
}

impl CodecParts {
    /// The median of each part over several measurements.
    pub fn median(samples: &[CodecParts]) -> CodecParts {
        let median = |part: fn(&CodecParts) -> f64| {
            percentile(&samples.iter().map(part).collect::<Vec<_>>(), 50.0)
        };
        CodecParts {
            decode_us: median(|p| p.decode_us),
            voice_encode_us: median(|p| p.voice_encode_us),
            pause_start_us: median(|p| p.pause_start_us),
            pause_start_frames: median(|p| p.pause_start_frames),
            pause_replay_us: median(|p| p.pause_replay_us),
        }
    }

    /// The codec cost of a call whose downlink is AI audio a share `ai_share` of the time, in
    /// cycles of `cycle_frames` frames with one pause each (the load harness's echo).
    pub fn cost(&self, ai_share: f64, cycle_frames: f64) -> CodecCost {
        let ai_share = ai_share.clamp(0.0, 1.0);
        let pause_frames = (1.0 - ai_share) * cycle_frames;
        let encoded = pause_frames.min(self.pause_start_frames);
        let pause_us = self.pause_start_us * encoded / self.pause_start_frames.max(1.0)
            + (pause_frames - encoded) * self.pause_replay_us;
        CodecCost {
            frame_us: self.decode_us
                + ai_share * self.voice_encode_us
                + pause_us / cycle_frames.max(1.0),
        }
    }
}

impl CodecCost {
    /// Cores one call's codec work takes (50 frames a second each way).
    pub fn cores_per_call(&self) -> f64 {
        self.frame_us * 50.0 / 1e6
    }
}

/// The overflow test: signed `connect`s at capacity.
#[derive(Debug, Clone, Default)]
pub struct OverflowResult {
    pub sent: u64,
    pub refused: u64,
    pub other: u64,
    pub seconds: f64,
    pub bridge_cores: f64,
    /// Whether the bridge had no live call afterwards and took a new call.
    pub permits_intact: bool,
    pub problems: Vec<String>,
}

impl OverflowResult {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.sent as f64 / self.seconds
        } else {
            0.0
        }
    }
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The per-level table printed at the end.
pub fn table(levels: &[LevelResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:>6} {:>7} {:>17} {:>11} {:>11} {:>13} {:>11} {:>11} {:>13} {:>8} {:>9} {:>8} {:>8}",
        "calls",
        "admit",
        "refuse",
        "setup p50/p99/max",
        "up p50/p99",
        "down p50/99",
        "pkts sent/rcv",
        "lost up/dn",
        "late/bunch",
        "sent p99/>10ms",
        "CPU %",
        "%/call",
        "RSS MiB",
        "after"
    );
    for level in levels {
        let per_call = level.cpu_percent_per_call().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "{:>5} {:>6} {:>7} {:>17} {:>11} {:>11} {:>13} {:>11} {:>11} {:>13} {:>8.1} {:>9.3} {:>8.1} {:>8.1}",
            level.calls,
            level.admitted,
            level.refused,
            format!(
                "{}/{}/{}",
                ms(percentile(&level.setup_ms, 50.0)),
                ms(percentile(&level.setup_ms, 99.0)),
                ms(max(&level.setup_ms))
            ),
            format!(
                "{}/{}",
                ms(percentile(&level.uplink_ms, 50.0)),
                ms(percentile(&level.uplink_ms, 99.0))
            ),
            format!(
                "{}/{}",
                ms(percentile(&level.downlink_ms, 50.0)),
                ms(percentile(&level.downlink_ms, 99.0))
            ),
            format!("{}/{}", level.packets_sent, level.packets_received),
            format!("{}/{}", level.uplink_concealed, level.downlink_lost),
            format!("{}/{}", level.late, level.bunched),
            format!(
                "{}/{}",
                ms(level.send_delay_p99_ms.unwrap_or(f64::NAN)),
                level.frames_sent_late
            ),
            level.bridge_cores * 100.0,
            per_call,
            level.rss_mib,
            level.rss_after_mib,
        );
    }
    out
}

pub const CSV_HEADER: &str = "calls,admitted,refused,failed,setup_p50_ms,setup_p99_ms,setup_max_ms,\
uplink_markers,uplink_p50_ms,uplink_p99_ms,downlink_markers,downlink_p50_ms,downlink_p99_ms,uplink_markers_lost,\
downlink_markers_lost,round_trips_missing,packets_sent,packets_received,downlink_lost,\
uplink_concealed,late,bunched,max_gap_ms,jitter_ms,late_pacer_ticks,frames_sent_over_10ms_late,bridge_cpu_percent,\
bridge_cpu_percent_per_call,rss_mib,rss_after_mib,harness_cpu_percent,harness_stalls,harness_max_lag_ms,ai_audio_share,\
forwarded,forward_p50_ms,forward_p99_ms,redis_commands,redis_cpu_ms,frame_send_delay_p99_ms,steal_ms,steal_peak_100ms_ms";

pub fn csv(levels: &[LevelResult]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for l in levels {
        let per_call = l.cpu_percent_per_call().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{},{},{},{},{:.2},{:.2},{:.2},{},{:.2},{:.2},{},{:.2},{:.2},{},{},{},{},{},{},{},{},{},{:.1},{:.2},{},{},{:.2},{:.4},{:.1},{:.1},{:.2},{},{:.1},{:.3},{},{:.3},{:.3},{},{:.1},{:.2},{:.0},{:.0}",
            l.calls,
            l.admitted,
            l.refused,
            l.failed,
            percentile(&l.setup_ms, 50.0),
            percentile(&l.setup_ms, 99.0),
            max(&l.setup_ms),
            l.uplink_ms.len(),
            percentile(&l.uplink_ms, 50.0),
            percentile(&l.uplink_ms, 99.0),
            l.downlink_ms.len(),
            percentile(&l.downlink_ms, 50.0),
            percentile(&l.downlink_ms, 99.0),
            l.uplink_markers_lost,
            l.downlink_markers_lost,
            l.round_trips_missing,
            l.packets_sent,
            l.packets_received,
            l.downlink_lost,
            l.uplink_concealed,
            l.late,
            l.bunched,
            l.max_gap_ms,
            l.jitter_ms,
            l.late_pacer_ticks,
            l.frames_sent_late,
            l.bridge_cores * 100.0,
            per_call,
            l.rss_mib,
            l.rss_after_mib,
            l.harness_cores * 100.0,
            l.harness_stalls,
            l.harness_max_lag_ms,
            l.ai_audio_share().unwrap_or(f64::NAN),
            l.forwarded,
            l.forward_p50_ms,
            l.forward_p99_ms,
            l.redis_commands,
            l.redis_cpu_ms,
            l.send_delay_p99_ms.unwrap_or(f64::NAN),
            l.steal_ms,
            l.steal_peak_ms,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn a_line_is_fitted_exactly() {
        let fit = linear_fit(&[(10.0, 0.15), (50.0, 0.55), (100.0, 1.05)]).expect("fit");
        assert!((fit.slope - 0.01).abs() < 1e-9);
        assert!((fit.intercept - 0.05).abs() < 1e-9);
        assert!(linear_fit(&[(5.0, 1.0)]).is_none());
    }

    #[test]
    fn the_csv_has_one_row_per_level_and_matching_columns() {
        let level = LevelResult {
            calls: 5,
            admitted: 5,
            setup_ms: vec![10.0, 20.0],
            ..LevelResult::default()
        };
        let text = csv(&[level.clone(), level]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = lines[0].split(',').count();
        assert!(lines[1..].iter().all(|l| l.split(',').count() == columns));
    }
}
