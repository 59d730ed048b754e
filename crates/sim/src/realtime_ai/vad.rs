//! Energy voice-activity detection over 20 ms windows of 24 kHz PCM16: the double's server VAD.
//!
//! Sans-IO: it sees samples only, and its clock is the audio itself (window *n* starts at
//! `20·n` ms of session audio), so a test can feed a minute of audio in a millisecond.

/// Samples per analysis window: 20 ms at 24 kHz.
pub(super) const WINDOW_SAMPLES: usize = 480;
/// Length of one analysis window.
pub(super) const WINDOW_MS: u64 = 20;

/// What the session's `turn_detection` asks of the detector, re-read on every feed so a
/// `session.update` takes effect at the next window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct VadParams {
    /// A window is speech when its RMS is at least this.
    pub threshold_rms: f64,
    /// Continuous silence that ends a turn.
    pub silence_duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VadEvent {
    /// The first speech window of a turn begins at `onset_ms`.
    Started { onset_ms: u64 },
    /// The turn's last speech window ended at `speech_end_ms`; the silence that followed reached
    /// `silence_duration_ms` at `detected_ms`.
    Stopped {
        speech_end_ms: u64,
        detected_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Quiet,
    Speaking { speech_end_ms: u64, silence_ms: u64 },
}

#[derive(Debug)]
pub(super) struct EnergyVad {
    /// The tail of the last feed that did not fill a window; appends may be any size.
    pending: Vec<i16>,
    /// Windows analysed so far; window `n` covers `[20n, 20n + 20)` ms of session audio.
    windows: u64,
    state: State,
}

impl EnergyVad {
    pub(super) fn new() -> Self {
        Self {
            pending: Vec::with_capacity(WINDOW_SAMPLES),
            windows: 0,
            state: State::Quiet,
        }
    }

    /// Whether a turn is in progress (speech started, not yet stopped).
    pub(super) fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Forgets the turn in progress (after a commit or clear) without losing window alignment.
    pub(super) fn reset(&mut self) {
        self.state = State::Quiet;
    }

    /// Analyses `samples` (the next audio of the session, contiguous with the previous feed).
    /// With `params` `None` (turn detection off) the windows are consumed but never classified.
    pub(super) fn feed(
        &mut self,
        samples: &[i16],
        params: Option<VadParams>,
        out: &mut Vec<VadEvent>,
    ) {
        let mut rest = samples;
        if !self.pending.is_empty() {
            let missing = WINDOW_SAMPLES - self.pending.len();
            let take = missing.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < WINDOW_SAMPLES {
                return;
            }
            let speech = params.map(|p| rms(&self.pending) >= p.threshold_rms);
            self.pending.clear();
            self.window(speech, params, out);
        }
        let mut windows = rest.chunks_exact(WINDOW_SAMPLES);
        for window in windows.by_ref() {
            let speech = params.map(|p| rms(window) >= p.threshold_rms);
            self.window(speech, params, out);
        }
        self.pending.extend_from_slice(windows.remainder());
    }

    fn window(&mut self, speech: Option<bool>, params: Option<VadParams>, out: &mut Vec<VadEvent>) {
        let start_ms = self.windows * WINDOW_MS;
        let end_ms = start_ms + WINDOW_MS;
        self.windows += 1;
        let (Some(speech), Some(params)) = (speech, params) else {
            self.state = State::Quiet;
            return;
        };
        self.state = match (self.state, speech) {
            (State::Quiet, false) => State::Quiet,
            (State::Quiet, true) => {
                out.push(VadEvent::Started { onset_ms: start_ms });
                State::Speaking {
                    speech_end_ms: end_ms,
                    silence_ms: 0,
                }
            }
            (State::Speaking { .. }, true) => State::Speaking {
                speech_end_ms: end_ms,
                silence_ms: 0,
            },
            (
                State::Speaking {
                    speech_end_ms,
                    silence_ms,
                },
                false,
            ) => {
                let silence_ms = silence_ms + WINDOW_MS;
                if silence_ms >= params.silence_duration_ms {
                    out.push(VadEvent::Stopped {
                        speech_end_ms,
                        detected_ms: end_ms,
                    });
                    State::Quiet
                } else {
                    State::Speaking {
                        speech_end_ms,
                        silence_ms,
                    }
                }
            }
        };
    }
}

fn rms(window: &[i16]) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    let energy: f64 = window.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / window.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: VadParams = VadParams {
        threshold_rms: 400.0,
        silence_duration_ms: 200,
    };

    fn tone(ms: usize) -> Vec<i16> {
        (0..ms * 24)
            .map(|i| (8000.0 * (i as f64 * std::f64::consts::TAU * 1000.0 / 24000.0).sin()) as i16)
            .collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 24]
    }

    fn feed_in_chunks(vad: &mut EnergyVad, audio: &[i16], chunk: usize) -> Vec<VadEvent> {
        let mut events = Vec::new();
        for piece in audio.chunks(chunk) {
            vad.feed(piece, Some(PARAMS), &mut events);
        }
        events
    }

    #[test]
    fn a_turn_starts_at_the_first_speech_window_and_stops_after_the_silence() {
        let audio = [silence(100), tone(500), silence(300)].concat();
        let mut vad = EnergyVad::new();
        let events = feed_in_chunks(&mut vad, &audio, 480);
        assert_eq!(
            events,
            vec![
                VadEvent::Started { onset_ms: 100 },
                VadEvent::Stopped {
                    speech_end_ms: 600,
                    detected_ms: 800
                }
            ]
        );
        assert!(!vad.in_speech());
    }

    #[test]
    fn odd_sized_feeds_give_the_same_events_as_whole_windows() {
        let audio = [
            silence(60),
            tone(300),
            silence(250),
            tone(100),
            silence(400),
        ]
        .concat();
        let expected = feed_in_chunks(&mut EnergyVad::new(), &audio, WINDOW_SAMPLES);
        for chunk in [1, 7, 333, 481, 2400, 100_000] {
            assert_eq!(
                feed_in_chunks(&mut EnergyVad::new(), &audio, chunk),
                expected,
                "chunk {chunk}"
            );
        }
        assert_eq!(expected.len(), 4);
    }

    #[test]
    fn a_pause_shorter_than_the_silence_duration_does_not_end_the_turn() {
        let audio = [tone(200), silence(100), tone(200), silence(200)].concat();
        let events = feed_in_chunks(&mut EnergyVad::new(), &audio, 480);
        assert_eq!(
            events,
            vec![
                VadEvent::Started { onset_ms: 0 },
                VadEvent::Stopped {
                    speech_end_ms: 500,
                    detected_ms: 700
                }
            ]
        );
    }

    #[test]
    fn quiet_audio_below_the_threshold_is_silence() {
        let quiet: Vec<i16> = tone(500).iter().map(|s| s / 40).collect();
        assert!(feed_in_chunks(&mut EnergyVad::new(), &quiet, 480).is_empty());
    }

    #[test]
    fn turned_off_detection_keeps_the_window_clock_running() {
        let mut vad = EnergyVad::new();
        let mut events = Vec::new();
        vad.feed(&tone(110), None, &mut events);
        assert!(events.is_empty());
        vad.feed(&tone(50), Some(PARAMS), &mut events);
        // Windows stay aligned to session audio (20 ms grid), not to the moment detection came
        // on: the window straddling the switch (100–120 ms) is the first one judged.
        assert_eq!(events, vec![VadEvent::Started { onset_ms: 100 }]);
    }

    #[test]
    fn reset_forgets_the_turn() {
        let mut vad = EnergyVad::new();
        let mut events = Vec::new();
        vad.feed(&tone(100), Some(PARAMS), &mut events);
        assert!(vad.in_speech());
        vad.reset();
        vad.feed(&silence(400), Some(PARAMS), &mut events);
        assert_eq!(events, vec![VadEvent::Started { onset_ms: 0 }]);
    }
}
