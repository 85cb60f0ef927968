//! Integration tests of `cal-storage`, one binary, each test on a fresh database of its own
//! (`cal_test_support::TestDb`): the change sink and the change log (`changes`), the hot reads'
//! plans at the medium scale (`explain`), the seed (`seed`), and the benchmark scale, ignored
//! unless asked for (`large`, run by hand with
//! `cargo test --release -p cal-storage --test it large -- --ignored --nocapture`).

mod changes;
mod explain;
mod large;
mod seed;
