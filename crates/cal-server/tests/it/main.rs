//! Integration tests of `cal-server`, one binary, against the `calendar` binary itself
//! (`CARGO_BIN_EXE_calendar`) run as child processes: one process end to end (`binary`: serve,
//! token, fixtures, print-schema, refusals at start, SIGTERM), several sharing PostgreSQL,
//! Redis and a broker (`cluster`), and one under a k6 scenario whose thresholds pass, then fail
//! against a server without caches (`loadtest`). Nothing here installs process-global state in
//! the test process. `tests/traces.rs` is a binary of its own: it installs the global tracing
//! subscriber and OpenTelemetry tracer provider and propagator in-process.

mod binary;
mod cluster;
mod loadtest;
