//! The library half of the `calendar` binary: what its integration tests need in-process.
//! Everything else (configuration, wiring, subcommands) lives in the binary (`main.rs`).

pub mod telemetry;
