//! The AI's voice waiting for the pacer: a playback queue that knows how much of each assistant
//! item was actually played (for barge-in truncation). Sans-IO: no clock, no socket.

use std::collections::VecDeque;

use super::codec::{PCM_SAMPLE_RATE, SAMPLES_PER_FRAME};

const SAMPLES_PER_MS: usize = (PCM_SAMPLE_RATE / 1000) as usize;
/// Cancelled responses remembered so that their late deltas are dropped.
const CANCELLED_RESPONSES_KEPT: usize = 8;
/// Items whose progress is remembered after they stop playing (for truncation and logs).
const ITEMS_KEPT: usize = 8;

/// How far one assistant item got: received from the AI vs played to the caller, in samples.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ItemProgress {
    response_id: String,
    item_id: String,
    content_index: u32,
    received: usize,
    played: usize,
}

/// A run of queued samples belonging to one item.
#[derive(Clone, Debug)]
struct Segment {
    item: usize,
    samples: usize,
}

/// What the AI must be told after a barge-in: cut this item at `audio_end_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub item_id: String,
    pub content_index: u32,
    pub audio_end_ms: u64,
}

/// Queue of AI audio (PCM16 24 kHz) waiting for the pacer.
#[derive(Debug, Default)]
pub struct PlaybackBuffer {
    samples: VecDeque<i16>,
    segments: VecDeque<Segment>,
    /// Progress per item; `Segment::item` indexes into it, counted from `items_base`.
    items: VecDeque<ItemProgress>,
    items_base: usize,
    cancelled: VecDeque<String>,
}

impl PlaybackBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one audio delta (PCM16 little-endian bytes). Deltas of a response that was cut off
    /// by a barge-in are dropped; returns whether the delta was queued.
    pub fn push(
        &mut self,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        pcm_le: &[u8],
    ) -> bool {
        if self.cancelled.iter().any(|id| id == response_id) {
            return false;
        }
        let count = pcm_le.len() / 2;
        if count == 0 {
            return true;
        }
        self.samples.extend(
            pcm_le
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
        );
        let item = self.item_index(response_id, item_id, content_index);
        self.items[item - self.items_base].received += count;
        match self.segments.back_mut() {
            Some(last) if last.item == item => last.samples += count,
            _ => self.segments.push_back(Segment {
                item,
                samples: count,
            }),
        }
        true
    }

    fn item_index(&mut self, response_id: &str, item_id: &str, content_index: u32) -> usize {
        if let Some(pos) = self
            .items
            .iter()
            .rposition(|p| p.item_id == item_id && p.content_index == content_index)
        {
            return self.items_base + pos;
        }
        self.items.push_back(ItemProgress {
            response_id: response_id.to_owned(),
            item_id: item_id.to_owned(),
            content_index,
            received: 0,
            played: 0,
        });
        self.trim_items();
        self.items_base + self.items.len() - 1
    }

    /// Forgets the oldest items that no queued segment refers to.
    fn trim_items(&mut self) {
        let oldest_queued = self.segments.front().map(|s| s.item);
        while self.items.len() > ITEMS_KEPT && oldest_queued.is_none_or(|i| i > self.items_base) {
            self.items.pop_front();
            self.items_base += 1;
        }
    }

    /// Fills `out` (one 20 ms frame) with the next queued audio, padding with silence. Returns
    /// the number of AI samples in the frame (0: the frame is silence).
    pub fn pop_frame(&mut self, out: &mut [i16]) -> usize {
        debug_assert_eq!(out.len(), SAMPLES_PER_FRAME);
        let mut filled = 0;
        while filled < out.len() {
            let Some(segment) = self.segments.front_mut() else {
                break;
            };
            let take = segment.samples.min(out.len() - filled);
            for slot in &mut out[filled..filled + take] {
                // Invariant: segments account for exactly the samples in the queue.
                *slot = self.samples.pop_front().unwrap_or(0);
            }
            filled += take;
            segment.samples -= take;
            let item = segment.item;
            if segment.samples == 0 {
                self.segments.pop_front();
            }
            if let Some(progress) = self.items.get_mut(item - self.items_base) {
                progress.played += take;
            }
        }
        out[filled..].fill(0);
        filled
    }

    /// Audio queued and not yet played.
    pub fn queued_ms(&self) -> u64 {
        (self.samples.len() / SAMPLES_PER_MS) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The caller started speaking: if AI audio is still queued, drop it all at once and return
    /// the truncations to send (realtime spec §7.2): the item that was playing is cut at the
    /// milliseconds actually played, later queued items at 0. The responses involved are
    /// remembered so their late deltas are dropped. Nothing queued → nothing to truncate.
    pub fn barge_in(&mut self) -> Vec<Truncation> {
        if self.samples.is_empty() {
            return Vec::new();
        }
        let mut truncations: Vec<Truncation> = Vec::new();
        for segment in self.segments.drain(..) {
            let Some(progress) = self.items.get(segment.item - self.items_base) else {
                continue;
            };
            if truncations.iter().any(|t| t.item_id == progress.item_id) {
                continue;
            }
            let played_ms = (progress.played.min(progress.received) / SAMPLES_PER_MS) as u64;
            truncations.push(Truncation {
                item_id: progress.item_id.clone(),
                content_index: progress.content_index,
                audio_end_ms: played_ms,
            });
            if !self.cancelled.contains(&progress.response_id) {
                self.cancelled.push_back(progress.response_id.clone());
                if self.cancelled.len() > CANCELLED_RESPONSES_KEPT {
                    self.cancelled.pop_front();
                }
            }
        }
        self.samples.clear();
        self.trim_items();
        truncations
    }

    /// Milliseconds of `item_id` played so far (None if unknown).
    pub fn played_ms(&self, item_id: &str) -> Option<u64> {
        self.items
            .iter()
            .rev()
            .find(|p| p.item_id == item_id)
            .map(|p| (p.played / SAMPLES_PER_MS) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm_bytes(ms: usize, value: i16) -> Vec<u8> {
        std::iter::repeat_n(value.to_le_bytes(), ms * SAMPLES_PER_MS)
            .flatten()
            .collect()
    }

    fn frame() -> Vec<i16> {
        vec![0; SAMPLES_PER_FRAME]
    }

    #[test]
    fn queued_audio_comes_out_in_order_in_20_ms_frames() {
        let mut buffer = PlaybackBuffer::new();
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(30, 7));
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(10, 9));
        let mut out = frame();
        assert_eq!(buffer.pop_frame(&mut out), 480);
        assert!(out.iter().all(|&s| s == 7));
        assert_eq!(buffer.pop_frame(&mut out), 480);
        assert!(out[..240].iter().all(|&s| s == 7));
        assert!(out[240..].iter().all(|&s| s == 9));
        assert_eq!(buffer.pop_frame(&mut out), 0);
        assert!(out.iter().all(|&s| s == 0));
        assert_eq!(buffer.played_ms("item_1"), Some(40));
    }

    #[test]
    fn a_partial_frame_is_padded_with_silence() {
        let mut buffer = PlaybackBuffer::new();
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(5, 100));
        let mut out = frame();
        assert_eq!(buffer.pop_frame(&mut out), 120);
        assert!(out[..120].iter().all(|&s| s == 100));
        assert!(out[120..].iter().all(|&s| s == 0));
    }

    #[test]
    fn barge_in_drops_the_queue_and_truncates_at_what_was_played() {
        let mut buffer = PlaybackBuffer::new();
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(1000, 1));
        let mut out = frame();
        for _ in 0..13 {
            buffer.pop_frame(&mut out);
        }
        let truncations = buffer.barge_in();
        assert_eq!(
            truncations,
            vec![Truncation {
                item_id: "item_1".into(),
                content_index: 0,
                audio_end_ms: 260,
            }]
        );
        assert!(buffer.is_empty());
        assert_eq!(buffer.pop_frame(&mut out), 0);
        // Late deltas of the interrupted response are dropped, a new response plays.
        assert!(!buffer.push("resp_1", "item_1", 0, &pcm_bytes(100, 1)));
        assert!(buffer.push("resp_2", "item_2", 0, &pcm_bytes(100, 2)));
        assert_eq!(buffer.pop_frame(&mut out), 480);
        assert!(out.iter().all(|&s| s == 2));
    }

    #[test]
    fn barge_in_cuts_later_queued_items_at_zero() {
        let mut buffer = PlaybackBuffer::new();
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(40, 1));
        buffer.push("resp_2", "item_2", 0, &pcm_bytes(40, 2));
        let mut out = frame();
        buffer.pop_frame(&mut out);
        let truncations = buffer.barge_in();
        assert_eq!(truncations.len(), 2);
        assert_eq!(truncations[0].audio_end_ms, 20);
        assert_eq!(truncations[1].item_id, "item_2");
        assert_eq!(truncations[1].audio_end_ms, 0);
    }

    #[test]
    fn barge_in_with_nothing_queued_truncates_nothing() {
        let mut buffer = PlaybackBuffer::new();
        buffer.push("resp_1", "item_1", 0, &pcm_bytes(20, 1));
        let mut out = frame();
        buffer.pop_frame(&mut out);
        assert!(buffer.barge_in().is_empty());
        // The response was not cut off, so its further audio still plays.
        assert!(buffer.push("resp_1", "item_1", 0, &pcm_bytes(20, 1)));
    }
}
