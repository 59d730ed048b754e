//! WhatsApp Cloud API: webhook payloads, signature check, SDP rules, Graph API client (call
//! actions, messages, call permissions).

pub mod graph;
pub mod messaging;
pub mod permissions;
pub mod sdp;
pub mod signature;
pub mod webhook;
