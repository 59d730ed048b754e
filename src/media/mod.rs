//! Media: PeerConnection set-up, Opus codec, playback buffer and 20 ms pacer.

pub mod codec;
pub mod uplink;
