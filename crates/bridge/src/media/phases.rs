//! Where in the 20 ms period each call sends its frames.
//!
//! Every call's pacer wakes once per 20 ms to encode and send a frame. Left to chance (each call
//! on the phase of the moment its media started) several calls land on the same millisecond
//! now and then, and their frames wait on each other: that wait is added to the downlink
//! latency, and the uplink packets arriving meanwhile wait too. [`FramePhases`] hands each call
//! the least used of 20 one-millisecond slots (tokio's timer resolution), so the frame work is
//! spread evenly over the period, and frees the slot when the call ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::codec::FRAME_PERIOD;

/// One slot per millisecond of the frame period.
pub const SLOTS: usize = 20;
const SLOT_WIDTH: Duration = Duration::from_millis(1);

/// The process-wide table of frame slots; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct FramePhases {
    epoch: Instant,
    calls_per_slot: Arc<Mutex<[u32; SLOTS]>>,
}

impl Default for FramePhases {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl FramePhases {
    /// Slot 0 starts at `epoch` and every 20 ms after it.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            calls_per_slot: Arc::new(Mutex::new([0; SLOTS])),
        }
    }

    /// Takes the slot with the fewest calls (the lowest such slot); it is freed on drop.
    pub fn take(&self) -> PhaseSlot {
        let mut calls = self.calls_per_slot.lock();
        let (index, _) = calls
            .iter()
            .enumerate()
            .min_by_key(|&(index, &count)| (count, index))
            .expect("SLOTS is not zero");
        calls[index] += 1;
        PhaseSlot {
            index,
            offset: self.epoch + SLOT_WIDTH * index as u32,
            calls_per_slot: Arc::clone(&self.calls_per_slot),
        }
    }

    #[cfg(test)]
    fn calls_per_slot(&self) -> [u32; SLOTS] {
        *self.calls_per_slot.lock()
    }
}

/// One call's place in the frame period.
#[derive(Debug)]
pub struct PhaseSlot {
    index: usize,
    /// The slot's first instant; it recurs every 20 ms.
    offset: Instant,
    calls_per_slot: Arc<Mutex<[u32; SLOTS]>>,
}

impl PhaseSlot {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The first instant of this slot at or after `at`.
    pub fn first_at_or_after(&self, at: Instant) -> Instant {
        let Some(since) = at.checked_duration_since(self.offset) else {
            return self.offset;
        };
        let period = FRAME_PERIOD.as_nanos();
        let periods = since.as_nanos().div_ceil(period);
        self.offset + Duration::from_nanos((periods * period) as u64)
    }
}

impl Drop for PhaseSlot {
    fn drop(&mut self) {
        let mut calls = self.calls_per_slot.lock();
        calls[self.index] = calls[self.index].saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fill_the_emptiest_slots_and_free_them_when_they_end() {
        let phases = FramePhases::new(Instant::now());
        let first: Vec<PhaseSlot> = (0..SLOTS).map(|_| phases.take()).collect();
        let indices: Vec<usize> = first.iter().map(PhaseSlot::index).collect();
        assert_eq!(indices, (0..SLOTS).collect::<Vec<_>>());
        assert_eq!(phases.calls_per_slot(), [1; SLOTS]);

        let second = phases.take();
        assert_eq!(second.index(), 0);
        drop(first);
        let mut expected = [0; SLOTS];
        expected[0] = 1;
        assert_eq!(phases.calls_per_slot(), expected);

        // A slot freed by an ended call is the next one given out.
        assert_eq!(phases.take().index(), 1);
    }

    #[test]
    fn a_slot_recurs_every_frame_period_at_its_own_millisecond() {
        let epoch = Instant::now();
        let phases = FramePhases::new(epoch);
        let slots: Vec<PhaseSlot> = (0..4).map(|_| phases.take()).collect();
        let slot = &slots[3];
        let ms = Duration::from_millis;

        assert_eq!(slot.first_at_or_after(epoch), epoch + ms(3));
        assert_eq!(slot.first_at_or_after(epoch + ms(3)), epoch + ms(3));
        assert_eq!(
            slot.first_at_or_after(epoch + ms(3) + Duration::from_nanos(1)),
            epoch + ms(23)
        );
        assert_eq!(slot.first_at_or_after(epoch + ms(1_000)), epoch + ms(1_003));
        assert_eq!(slot.first_at_or_after(epoch + ms(1_004)), epoch + ms(1_023));
    }
}
