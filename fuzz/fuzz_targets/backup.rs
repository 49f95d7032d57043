#![no_main]
//! See kms_fuzz_targets::backup for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kms_fuzz_targets::backup::run(data);
});
