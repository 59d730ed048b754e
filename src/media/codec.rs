//! (being written by helper C; placeholder constants)
pub const PCM_SAMPLE_RATE: u32 = 24_000;
pub const SAMPLES_PER_FRAME: usize = 480;
