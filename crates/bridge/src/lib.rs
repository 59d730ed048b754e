//! The serving core of whatsapp-voice-bridge: answers WhatsApp voice calls over WebRTC and
//! bridges each one to a realtime speech AI (OpenAI Realtime or Azure OpenAI). Everything
//! `serve` runs is here; the doubles, the demo and the load harness are the `sim` crate, which
//! depends on this one and never the other way round (docs/ARCHITECTURE.md).
//!
//! Map of the crate, by floor (a module imports only from floors below it; no loops):
//! - floor 6 — [`app`]: wires it all together: `App::build(config)`, `run_until_stopped`, drain.
//! - floor 5 — [`http`]: the axum router: signed webhook, `/health`, `/ready`, `/metrics`, admin;
//!   the listeners' bounded connections (timeouts, a cap).
//! - floor 4 — [`outreach`]: the business reaching users by WhatsApp's rules (permission,
//!   calls, messages) and the scheduler that delivers due reminders and callbacks.
//! - floor 3 — [`call`]: admission of inbound and outbound calls (`Calls`), the registry of live
//!   calls, the call flow, and the call task that owns one call from offer to hang-up.
//! - floor 2 — [`memory`]: what the AI is told about a caller at the start of a call;
//!   [`tools`]: the AI's functions on the caller's tasks and reminders (and "forget me");
//!   [`retention`]: the hourly purge of transcripts and call logs past `TRANSCRIPT_RETENTION`.
//! - floor 1 — [`config`]: every setting, from the environment, validated at start;
//!   [`fleet`]: call state shared between replicas through Redis (claims, tombstones,
//!   forwarded events, reports);
//!   [`store`]: the caller's data (`Store`: Supabase, or embedded SQLite on its own thread);
//!   [`whatsapp`]: webhook payloads, signature check, SDP rules, Graph API client (call actions,
//!   messages, call permissions);
//!   [`local_time`]: the caller's time zone and the times the AI passes to tools.
//! - floor 0 — [`media`]: the PeerConnection (the one place that names WebRTC types), Opus, the
//!   uplink and the downlink of a call's audio; [`realtime`]: the Realtime API client and its
//!   events; [`metrics`]: the Prometheus metrics; [`ids`]: call ids and phone numbers (masked
//!   in logs) and outside text made safe to log; [`allocator`]: hands the allocator's thread
//!   caches back once the bridge is idle; [`open_files`]: raises the open-file limit at start.

pub mod allocator;
pub mod app;
pub mod call;
pub mod config;
pub mod fleet;
pub mod http;
pub mod ids;
pub mod local_time;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod open_files;
pub mod outreach;
pub mod realtime;
pub mod retention;
pub mod scheduling;
pub mod store;
pub mod tools;
pub mod whatsapp;

/// Property-based fuzzing of the parsers of untrusted input (README, "Fuzzing").
#[cfg(test)]
mod fuzz;
