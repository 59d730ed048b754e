//! Test inputs shared by the core's unit tests, the wing (doubles, demo, load harness) and the
//! end-to-end tests: [`audio`] test signals and their analysis, and Meta's [`fixtures`].

pub mod audio;
pub mod fixtures;
