//! See `portcullis::fuzzing::front_door` for what this drives and the invariants it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzzing::front_door(data));
