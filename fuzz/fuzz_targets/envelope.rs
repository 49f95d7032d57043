#![no_main]
//! See kms_fuzz_targets::envelope for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kms_fuzz_targets::envelope::run(data);
});
