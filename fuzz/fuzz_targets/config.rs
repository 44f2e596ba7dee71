//! See `portcullis::fuzzing::config` for what this drives and the invariants it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzzing::config(data));
