#![no_main]
//! See kms_fuzz_targets::audit for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kms_fuzz_targets::audit::run(data);
});
