//! Helpers shared by the binary's integration tests.

#![allow(dead_code)] // each test file uses a part

pub mod deploy;
pub mod fake_api;
