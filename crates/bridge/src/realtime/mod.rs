//! The Realtime API (GA) WebSocket client for OpenAI and Azure OpenAI, and its event types.

pub mod client;
pub mod events;
