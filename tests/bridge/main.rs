//! Integration tests: the real bridge on loopback with its doubles (simulated Meta and AI).

mod browser;
mod calls;
mod cleanup;
mod cli;
mod connections;
mod drain;
mod fec;
mod fleet;
mod headroom;
mod keypad;
mod limits;
mod loss;
mod offers;
mod ops;
mod recovery;
mod reminders;
mod scheduling;
mod schema;
mod script;
mod support;
mod tools;
mod webhook;
