//! The 20 ms clock of the AI's voice toward the caller: a fixed schedule, kept in the call's
//! phase slot, that says how many frames are due at each poll. Sans-IO: it is given `now`.

use std::time::{Duration, Instant};

use super::codec::FRAME_PERIOD;
use super::phases::PhaseSlot;

/// Frames due at one pacer poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Frames to send now (0 when polled early).
    pub frames: u32,
    /// Frame slots given up because the task was too late to send them in time; the RTP
    /// timestamp still advances over them.
    pub skipped: u32,
    /// How long after its due instant the first of these frames is sent.
    pub delay: Duration,
    /// The poll came a whole period or more after its deadline (frames go out at once or slots
    /// are given up); the head start of the first poll is not lateness.
    pub late: bool,
}

/// The 20 ms clock of the outgoing audio. It keeps a fixed schedule from its start, so timing
/// errors do not accumulate; a late poll sends the missed frames (at most `MAX_BURST`) and
/// skips the rest rather than flooding the caller's jitter buffer.
#[derive(Debug)]
pub struct Pacer {
    next_due: Instant,
    late_polls: u64,
    /// Frames still to send ahead of their slot, with the next frame due.
    head_start: u32,
}

impl Pacer {
    pub const PERIOD: Duration = FRAME_PERIOD;
    /// Frames sent at once after a stall.
    pub const MAX_BURST: u32 = 3;
    /// Frames a stream started [`in_phase`](Self::in_phase) sends ahead of their slot with its
    /// first one. The receiver's jitter buffer then starts with one frame in hand instead of
    /// racing its 10 ms playout clock for the second packet: Chromium concealed 22–42 ms at
    /// the start of about one call in twenty without it, and decelerated every call's first
    /// second to build up what this gives at once. Every frame after the first keeps the
    /// spacing of its timestamp.
    pub const HEAD_START: u32 = 1;

    /// The first frame is due at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            next_due: start,
            late_polls: 0,
            head_start: 0,
        }
    }

    /// The first frame is due at `slot`'s first instant from `start` on (media starts within
    /// one period, §7.1), and every frame after it one period later: the packets' spacing
    /// matches their timestamps from the second one, which goes with the first
    /// ([`HEAD_START`](Self::HEAD_START)). (Sending the first frame at once and the second in
    /// the slot made the first gap 10–30 ms: Chromium's jitter buffer, still empty, concealed
    /// 42 ms right there in 7 of 10 calls.) The owner holds the slot for as long as the pacer
    /// runs.
    pub fn in_phase(start: Instant, slot: &PhaseSlot) -> Self {
        Self {
            head_start: Self::HEAD_START,
            ..Self::new(slot.first_at_or_after(start))
        }
    }

    /// When the next frame is due.
    pub fn deadline(&self) -> Instant {
        self.next_due
    }

    /// Polls that came a whole period or more after their deadline.
    pub fn late_polls(&self) -> u64 {
        self.late_polls
    }

    pub fn poll(&mut self, now: Instant) -> Due {
        if now < self.next_due {
            return Due::default();
        }
        let behind = now.duration_since(self.next_due);
        let slots = 1 + (behind.as_micros() / Self::PERIOD.as_micros()) as u32;
        let late = slots > 1;
        if late {
            self.late_polls += 1;
        }
        let frames = slots.min(Self::MAX_BURST);
        self.next_due += Self::PERIOD * slots;
        Due {
            frames: frames + std::mem::take(&mut self.head_start),
            skipped: slots - frames,
            delay: behind,
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::phases::FramePhases;

    #[test]
    fn pacer_sends_one_frame_per_period_on_a_fixed_schedule() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start);
        assert_eq!(pacer.poll(start).frames, 1);
        assert_eq!(pacer.poll(start + Duration::from_millis(5)).frames, 0);
        assert_eq!(pacer.deadline(), start + Duration::from_millis(20));
        // A poll 3 ms late does not shift the schedule.
        let due = pacer.poll(start + Duration::from_millis(23));
        assert_eq!((due.frames, due.delay), (1, Duration::from_millis(3)));
        assert_eq!(pacer.deadline(), start + Duration::from_millis(40));
        assert_eq!(pacer.late_polls(), 0);
    }

    #[test]
    fn pacer_catches_up_a_short_stall_and_skips_a_long_one() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start);
        pacer.poll(start);
        let due = pacer.poll(start + Duration::from_millis(61));
        assert_eq!(
            due,
            Due {
                frames: 3,
                skipped: 0,
                delay: Duration::from_millis(41),
                late: true,
            }
        );
        assert_eq!(pacer.deadline(), start + Duration::from_millis(80));
        let due = pacer.poll(start + Duration::from_millis(200));
        assert_eq!(
            due,
            Due {
                frames: 3,
                skipped: 4,
                delay: Duration::from_millis(120),
                late: true,
            }
        );
        assert_eq!(pacer.deadline(), start + Duration::from_millis(220));
        assert_eq!(pacer.late_polls(), 2);
    }

    #[test]
    fn pacer_in_phase_starts_in_its_slot_and_keeps_to_it() {
        let ms = Duration::from_millis;
        let epoch = Instant::now();
        let phases = FramePhases::new(epoch);
        let _taken: Vec<_> = (0..7).map(|_| phases.take()).collect();
        let slot = phases.take();
        assert_eq!(slot.index(), 7);

        // Media starts at 1 002 ms: slot 7's next instant is 1 007 ms; the first frame goes
        // then with the second (the head start), and the frames after them every 20 ms.
        let start = epoch + ms(1_002);
        let mut pacer = Pacer::in_phase(start, &slot);
        assert_eq!(pacer.deadline(), epoch + ms(1_007));
        assert_eq!(pacer.poll(start).frames, 0, "not before the slot");
        let first = pacer.poll(epoch + ms(1_007));
        assert_eq!((first.frames, first.late, first.skipped), (2, false, 0));
        assert_eq!(pacer.deadline(), epoch + ms(1_027));
        assert_eq!(
            pacer.poll(epoch + ms(1_027)),
            Due {
                frames: 1,
                ..Due::default()
            }
        );
        assert_eq!(pacer.deadline(), epoch + ms(1_047));

        // Media starts on the slot's instant: the first frame is due at once. (The first
        // call's end frees slot 7, which is taken again.)
        drop(slot);
        let slot = phases.take();
        assert_eq!(slot.index(), 7);
        let start = epoch + ms(1_027);
        let mut pacer = Pacer::in_phase(start, &slot);
        assert_eq!(pacer.poll(start).frames, 2);
        assert_eq!(pacer.deadline(), epoch + ms(1_047));
        assert_eq!(pacer.late_polls(), 0);
    }
}
