//! Shared by the property tests of this crate.

use proptest::prelude::ProptestConfig;

/// `default` cases per property, or `PROPTEST_CASES` when set (for a longer run).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}
