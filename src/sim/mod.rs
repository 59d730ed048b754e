//! Faithful doubles of the external parties, built from the specs: Meta's Graph API and a WebRTC
//! phone, and the OpenAI Realtime API. Used by the tests, the `demo` command and the load harness.

pub mod audio;
pub mod graph_double;
pub mod phone;
pub mod postgrest_double;
pub mod realtime_ai;
pub mod stack;
pub mod webhooks;
