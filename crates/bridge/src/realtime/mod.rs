//! The Realtime API (GA) WebSocket client for OpenAI and Azure OpenAI, and its event types;
//! what a call needs to carry on in a new session: the conversation so far ([`history`]) and
//! the caller's audio of the gap ([`gap`]), and when to try again ([`backoff`]).

pub mod backoff;
pub mod client;
pub mod events;
pub mod gap;
pub mod history;
