//! The caller's audio while a call has no AI session (§10.4 says drop it; a caller who goes on
//! talking through a one-second reconnect would lose their words, so the latest [`GAP_AUDIO`]
//! of it is kept and sent to the new session first).

use std::collections::VecDeque;
use std::time::Duration;

/// How much of the gap is kept: the latest two seconds.
pub const GAP_AUDIO: Duration = Duration::from_secs(2);
/// PCM16 samples per second of what the AI hears (24 kHz mono).
const RATE: usize = 24_000;

/// The latest [`GAP_AUDIO`] of caller audio, oldest dropped first.
#[derive(Debug, Default)]
pub struct GapAudio {
    samples: VecDeque<i16>,
    /// Samples dropped because the gap was longer than what is kept.
    dropped: usize,
}

impl GapAudio {
    fn capacity() -> usize {
        RATE * GAP_AUDIO.as_millis() as usize / 1000
    }

    pub fn push(&mut self, pcm: &[i16]) {
        let capacity = Self::capacity();
        let pcm = if pcm.len() > capacity {
            self.dropped += pcm.len() - capacity;
            &pcm[pcm.len() - capacity..]
        } else {
            pcm
        };
        let overflow = (self.samples.len() + pcm.len()).saturating_sub(capacity);
        self.dropped += overflow;
        self.samples.drain(..overflow);
        self.samples.extend(pcm);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// How long the kept audio lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_millis((self.samples.len() * 1000 / RATE) as u64)
    }

    /// How much audio did not fit.
    pub fn dropped(&self) -> Duration {
        Duration::from_millis((self.dropped * 1000 / RATE) as u64)
    }

    /// Everything kept, oldest first; the buffer is empty afterwards.
    pub fn take(&mut self) -> Vec<i16> {
        self.dropped = 0;
        self.samples.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_two_seconds_are_kept_in_order() {
        let mut gap = GapAudio::default();
        assert!(gap.is_empty());
        // 3 s in 20 ms frames, each frame filled with its own index.
        for frame in 0..150i16 {
            gap.push(&[frame; 480]);
        }
        assert_eq!(gap.duration(), GAP_AUDIO);
        assert_eq!(gap.dropped(), Duration::from_secs(1));
        let kept = gap.take();
        assert_eq!(kept.len(), 48_000);
        assert_eq!(kept[0], 50, "the first second was dropped");
        assert_eq!(*kept.last().unwrap(), 149);
        assert!(gap.is_empty());
        assert_eq!(gap.dropped(), Duration::ZERO);
    }

    #[test]
    fn one_push_longer_than_the_gap_keeps_its_end() {
        let mut gap = GapAudio::default();
        let long: Vec<i16> = (0..60_000).map(|i| (i % 30_000) as i16).collect();
        gap.push(&long);
        let kept = gap.take();
        assert_eq!(kept.len(), 48_000);
        assert_eq!(kept[..], long[12_000..]);
    }
}
