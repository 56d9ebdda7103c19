//! Arbitrary bytes as a NATS message: decode, validate, Struct → JSON, row. The
//! invariants live in `ponix_writer::fuzz_support`, which the regression test
//! `service/tests/fuzz_regressions.rs` runs on every committed crash and seed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = ponix_writer::fuzz_support::check_decode_invariants(bytes);
});
