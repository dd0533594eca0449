//! Fuzzes a ring consumer (and producer) over arbitrary shared-memory contents: see
//! `tests/support/fuzz_body.rs`, shared with the `fuzz_corpus_deterministic` case of
//! `tests/fault_campaign.rs`.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ring_consumer -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_body.rs"]
mod fuzz_body;

fuzz_target!(|data: &[u8]| {
    fuzz_body::ring_consumer(data);
});
