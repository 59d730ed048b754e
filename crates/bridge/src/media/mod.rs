//! Media: the PeerConnection, the Opus codec, and the two directions of a call's audio: the
//! [`uplink`] (caller to AI) and the [`downlink`] (AI to caller: playback queue, pacer and its
//! phase in the 20 ms period, stream encoder) and its [`loss_protection`] (in-band FEC while the
//! caller reports loss), and the caller's keypresses ([`keypad`]).

pub mod codec;
pub mod downlink;
pub mod keypad;
pub mod loss_protection;
pub mod pacer;
pub mod peer;
pub mod phases;
pub mod playback;
pub mod ports;
pub mod uplink;
