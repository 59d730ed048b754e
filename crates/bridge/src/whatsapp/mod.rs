//! WhatsApp Cloud API calling: webhook payloads, signature check, SDP rules, Graph API client.

pub mod graph;
pub mod sdp;
pub mod signature;
pub mod webhook;
