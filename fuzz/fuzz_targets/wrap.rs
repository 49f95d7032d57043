#![no_main]
//! See kms_fuzz_targets::wrap for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kms_fuzz_targets::wrap::run(data);
});
