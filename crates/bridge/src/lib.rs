//! whatsapp-voice-bridge: answers WhatsApp voice calls over WebRTC and bridges each one to a
//! realtime speech AI (OpenAI Realtime or Azure OpenAI).
//!
//! Map of the crate (arrows point one way: `http → registry → call → {media, realtime}`):
//! - [`config`]: every setting, read from the environment, validated at start.
//! - [`http`]: the axum router: webhook, health, metrics.
//! - [`whatsapp`]: webhook payloads, signature check, SDP rules, Graph API client.
//! - [`registry`]: admission: capacity semaphore, call map, one live call per caller.
//! - [`call`]: the call task that owns one call from offer to hang-up.
//! - [`media`]: PeerConnection set-up, Opus codec, playback buffer and 20 ms pacer.
//! - [`realtime`]: the Realtime API WebSocket client and its events.
//! - [`metrics`]: the Prometheus metrics.
//! - [`sim`]: faithful doubles of Meta (webhooks, Graph API, a WebRTC phone) and of the AI.
//! - [`app`]: wires it all together; [`demo`]: the local demo on the doubles;
//!   [`loadtest`]: the load harness that measures a bridge process on the doubles.

pub mod allocator;
pub mod app;
pub mod call;
pub mod config;
pub mod http;
pub mod ids;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod realtime;
pub mod store;
pub mod tools;
pub mod whatsapp;
