//! The wing around the serving core: faithful doubles of the external parties, built from the
//! specs, and what runs on them. Depends on the core (`bridge`); the core never on this.
//!
//! - [`graph_double`], [`webhooks`], [`phone`]: Meta: the Graph API, signed webhooks, a WebRTC
//!   phone that sends real Opus; [`callee`]: the user's phone for the calls the bridge places
//!   (picks up, declines or lets ring, answers permission requests, writes messages).
//! - [`realtime_ai`]: the OpenAI Realtime API (a WebSocket server with an energy VAD).
//! - [`postgrest_double`]: Supabase's PostgREST.
//! - [`stack`]: a whole local set-up in one process: both doubles and a bridge wired to them;
//!   [`bridge_process`]: a bridge as a process of its own (the harness's, the fleet's);
//!   [`fleet`]: several bridge processes sharing one Redis behind a round-robin ingress.
//! - [`demo`]: the `demo` command; [`loadtest`]: the load harness that measures a bridge process;
//!   [`browser`]: calls from headless Chromium, scoring what it plays of the AI's greeting.

pub mod bridge_process;
pub mod browser;
pub mod callee;
pub mod demo;
pub mod fleet;
pub mod graph_double;
pub mod loadtest;
pub mod loss;
pub mod phone;
pub mod postgrest_double;
pub mod realtime_ai;
pub mod stack;
pub mod webhooks;
