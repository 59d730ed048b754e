//! Per-call figures from the page's stats and the scores: the table and the summary line.

use serde_json::Value;

use super::call::CallRecord;
use super::score::Rendition;

/// The greeting's PESQ-WB goal.
pub const GOOD_PESQ: f64 = 3.8;
const RATE: f64 = 48_000.0;

/// One call's line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: u64,
    pub greeting_pesq: Option<f64>,
    pub later_pesq: Option<f64>,
    /// How well each rendition matched the reference where it was aligned (1.0: same shape).
    pub correlation: [Option<f64>; 2],
    /// Over the whole call (final `inbound-rtp`).
    pub concealed_samples: u64,
    pub concealment_events: u64,
    pub packets_lost: i64,
    pub accelerated: u64,
    pub decelerated: u64,
    /// Concealed samples while each rendition played.
    pub concealed_greeting: Option<u64>,
    pub concealed_later: Option<u64>,
    /// Accelerated + decelerated samples while each rendition played.
    pub stretched_greeting: Option<u64>,
    pub stretched_later: Option<u64>,
    /// Mean jitter-buffer delay of the samples played during each rendition (ms).
    pub buffer_greeting_ms: Option<f64>,
    pub buffer_later_ms: Option<f64>,
    /// The highest interarrival jitter Chromium reported during the call (RFC 3550, ms): the
    /// pacer's send-time jitter as the phone sees it.
    pub max_jitter_ms: Option<f64>,
    /// Frames the bridge itself sent more than 10 ms after their slot during the call.
    pub bridge_sent_late: Option<u64>,
    /// Connection `connected` (ICE + DTLS) → the greeting's first sample played (ms).
    pub connected_to_greeting_ms: Option<f64>,
    /// `connect` webhook → `accept` answered (ms).
    pub setup_ms: f64,
}

impl Row {
    pub fn of(record: &CallRecord, renditions: &[Rendition], clip_seconds: f64) -> Row {
        let stats = &record.page.stats;
        let last = stats.last().cloned().unwrap_or(Value::Null);
        let int = |row: &Value, field: &str| row[field].as_f64().unwrap_or(0.0);
        let start_frame = record.page.record_start_frame;
        // A rendition's span in audio-context frames, from its aligned start and the clip length.
        let span = |r: Option<&Rendition>| -> Option<(f64, f64)> {
            let begin = start_frame? + r?.start? as f64;
            Some((begin, begin + clip_seconds * RATE))
        };
        let window = |span: Option<(f64, f64)>| -> Option<(&Value, &Value)> {
            let (begin, end) = span?;
            let frame = |row: &Value| row["frame"].as_f64().unwrap_or(0.0);
            let before = stats.iter().rev().find(|row| frame(row) <= begin)?;
            let after = stats.iter().find(|row| frame(row) >= end)?;
            Some((before, after))
        };
        let delta = |w: Option<(&Value, &Value)>, field: &str| {
            w.map(|(a, b)| int(b, field) - int(a, field))
        };
        let stretched = |w| {
            Some(
                delta(w, "insertedSamplesForDeceleration")?
                    + delta(w, "removedSamplesForAcceleration")?,
            )
            .map(|s| s.max(0.0) as u64)
        };
        let concealed = |w| delta(w, "concealedSamples").map(|s| s.max(0.0) as u64);
        let buffer_ms = |w| {
            let emitted = delta(w, "jitterBufferEmittedCount")?;
            (emitted > 0.0).then(|| delta(w, "jitterBufferDelay").unwrap_or(0.0) / emitted * 1000.0)
        };
        let greeting = window(span(renditions.first()));
        let later = window(span(renditions.get(1)));
        let connected_to_greeting_ms = span(renditions.first())
            .zip(record.page.connected_frame)
            .map(|((begin, _), connected)| (begin - connected) / RATE * 1000.0);
        Row {
            key: record.key,
            greeting_pesq: renditions.first().and_then(|r| r.pesq),
            later_pesq: renditions.get(1).and_then(|r| r.pesq),
            correlation: [
                renditions.first().and_then(|r| r.correlation),
                renditions.get(1).and_then(|r| r.correlation),
            ],
            concealed_samples: int(&last, "concealedSamples") as u64,
            concealment_events: int(&last, "concealmentEvents") as u64,
            packets_lost: int(&last, "packetsLost") as i64,
            accelerated: int(&last, "removedSamplesForAcceleration") as u64,
            decelerated: int(&last, "insertedSamplesForDeceleration") as u64,
            concealed_greeting: concealed(greeting),
            concealed_later: concealed(later),
            stretched_greeting: stretched(greeting),
            stretched_later: stretched(later),
            buffer_greeting_ms: buffer_ms(greeting),
            buffer_later_ms: buffer_ms(later),
            max_jitter_ms: stats
                .iter()
                .filter_map(|row| row["jitter"].as_f64())
                .reduce(f64::max)
                .map(|seconds| seconds * 1000.0),
            bridge_sent_late: record.bridge_sent_late,
            connected_to_greeting_ms,
            setup_ms: record.setup.as_secs_f64() * 1000.0,
        }
    }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The table, in Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| call | greeting PESQ-WB | later PESQ-WB | concealed samples (events) | concealed in greeting / later | packets lost | accelerated / decelerated samples | stretched in greeting / later | jitter buffer ms in greeting / later | max jitter ms | frames the bridge sent > 10 ms late | connected → greeting ms | setup ms |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} / {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {:.0} |\n",
            row.key,
            opt(row.greeting_pesq, 2),
            opt(row.later_pesq, 2),
            row.concealed_samples,
            row.concealment_events,
            opt(row.concealed_greeting.map(|s| s as f64), 0),
            opt(row.concealed_later.map(|s| s as f64), 0),
            row.packets_lost,
            row.accelerated,
            row.decelerated,
            opt(row.stretched_greeting.map(|s| s as f64), 0),
            opt(row.stretched_later.map(|s| s as f64), 0),
            opt(row.buffer_greeting_ms, 0),
            opt(row.buffer_later_ms, 0),
            opt(row.max_jitter_ms, 1),
            opt(row.bridge_sent_late.map(|n| n as f64), 0),
            opt(row.connected_to_greeting_ms, 0),
            row.setup_ms,
        ));
    }
    out
}

/// The summary: greetings at the goal, and concealment over all calls.
pub fn summary(rows: &[Row], placed: usize) -> String {
    let good = rows
        .iter()
        .filter(|r| r.greeting_pesq.is_some_and(|p| p >= GOOD_PESQ))
        .count();
    let concealing = rows.iter().filter(|r| r.concealment_events > 0).count();
    let events: u64 = rows.iter().map(|r| r.concealment_events).sum();
    let samples: u64 = rows.iter().map(|r| r.concealed_samples).sum();
    let median = |mut values: Vec<f64>| -> Option<f64> {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    format!(
        "{good} of {placed} greetings scored PESQ-WB ≥ {GOOD_PESQ} (median greeting {}, later {}); \
         {concealing} of {} calls concealed audio ({events} events, {samples} samples).",
        opt(
            median(rows.iter().filter_map(|r| r.greeting_pesq).collect()),
            2
        ),
        opt(
            median(rows.iter().filter_map(|r| r.later_pesq).collect()),
            2
        ),
        rows.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::page::PageResult;
    use serde_json::json;
    use std::time::Duration;

    /// Stats every 100 ms (4,800 frames) from frame 0: 100 samples stretched and 10 concealed
    /// per row, and a jitter-buffer delay of 40 ms for every sample emitted.
    fn record() -> CallRecord {
        let stats = (0..100u64)
            .map(|i| {
                json!({"frame": i * 4_800, "concealedSamples": i * 10, "concealmentEvents": 1,
                       "packetsLost": 0, "insertedSamplesForDeceleration": i * 60,
                       "removedSamplesForAcceleration": i * 40,
                       "jitterBufferDelay": i as f64 * 4_800.0 * 0.040,
                       "jitter": if i == 50 { 0.004 } else { 0.001 },
                       "jitterBufferEmittedCount": i * 4_800})
            })
            .collect();
        CallRecord {
            key: 3,
            page: PageResult {
                rate: 48_000,
                pcm: String::new(),
                record_start_frame: Some(9_600.0),
                connected_frame: Some(4_800.0),
                stats,
            },
            onsets: [0, 0],
            setup: Duration::from_millis(20),
            bridge_sent_late: Some(2),
        }
    }

    #[test]
    fn a_rendition_s_figures_are_the_stats_over_the_rows_around_it() {
        // The greeting starts 100 ms into the recording (frame 14,400) and lasts 1 s: rows 3 to 13.
        let greeting = Rendition {
            start: Some(4_800),
            correlation: Some(0.8),
            pesq: Some(3.1),
        };
        let row = Row::of(&record(), &[greeting], 1.0);
        assert_eq!(row.greeting_pesq, Some(3.1));
        assert_eq!(row.later_pesq, None);
        assert_eq!(row.stretched_greeting, Some(1_000));
        assert_eq!(row.concealed_greeting, Some(100));
        assert!((row.buffer_greeting_ms.unwrap() - 40.0).abs() < 1e-9);
        assert!((row.connected_to_greeting_ms.unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(row.concealed_samples, 990);
        assert_eq!(row.accelerated, 3_960);
        assert_eq!(row.decelerated, 5_940);
        assert!((row.max_jitter_ms.unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(row.bridge_sent_late, Some(2));
        assert!(table(std::slice::from_ref(&row)).contains("| 4.0 | 2 |"));
        assert!(summary(&[row], 2).starts_with("0 of 2 greetings"));
    }
}
