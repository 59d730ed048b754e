//! Test inputs shared by the core's unit tests, the wing (doubles, demo, load harness) and the
//! end-to-end tests: [`audio`] test signals and their analysis, Meta's [`fixtures`], and how the
//! kernel [`scheduling`] a thread.

pub mod audio;
pub mod fixtures;
pub mod scheduling;
