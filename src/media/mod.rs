//! Media: PeerConnection set-up, Opus codec, playback buffer and 20 ms pacer.

pub mod codec;
pub mod peer;
pub mod playback;
pub mod ports;
pub mod uplink;
