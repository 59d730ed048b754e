//! Media: PeerConnection set-up, Opus codec, playback buffer, 20 ms pacer and its phases.

pub mod codec;
pub mod peer;
pub mod phases;
pub mod playback;
pub mod ports;
pub mod uplink;
