#![no_main]
//! See kms_fuzz_targets::ciphertext for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kms_fuzz_targets::ciphertext::run(data);
});
