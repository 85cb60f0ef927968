//! The library half of the `calendar` binary: what its integration tests need in-process.
//! Everything else (configuration, wiring, subcommands) lives in the binary (`main.rs`).
//!
//! - [`telemetry`]: logs and traces, the process's one tracing subscriber (the binary installs
//!   it; `tests/traces.rs` installs it in-process to read its logs and exported spans).

pub mod telemetry;
