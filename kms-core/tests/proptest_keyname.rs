//! Property tests of key names and key ids: valid names round-trip, any name with a character
//! outside the allowed set is refused.
//!
//! 256 cases per property; raise with `PROPTEST_CASES`.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_core::keyname::{KeyId, KeyName, MAX_KEY_NAME};
use proptest::prelude::*;

mod common;

fn config() -> ProptestConfig {
    common::config(256)
}

/// A valid name: 1 to 6 segments of `[a-z0-9._-]`, none `.` or `..`, within the length limit.
fn valid_name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        "[a-z0-9._-]{1,40}".prop_filter("not . or ..", |s| s != "." && s != ".."),
        1..6,
    )
    .prop_map(|segments| segments.join("/"))
    .prop_filter("within the length limit", |n| n.len() <= MAX_KEY_NAME)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_name_round_trips(name in valid_name()) {
        let parsed: KeyName = name.parse().unwrap();
        prop_assert_eq!(parsed.as_str(), name.as_str());
        prop_assert_eq!(parsed.to_string(), name.clone());
        prop_assert_eq!(parsed.to_string().parse::<KeyName>().unwrap(), parsed);
    }

    /// Any character outside `[a-z0-9._-/]` (uppercase, space, control, any other Unicode),
    /// anywhere in a valid name, is refused, and the message names the rule.
    #[test]
    fn a_name_with_another_character_is_refused(
        name in valid_name(),
        bad in any::<char>().prop_filter("outside the allowed set", |c| {
            !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-' | '/')
        }),
        at in any::<prop::sample::Index>(),
    ) {
        let boundaries: Vec<usize> = (0..=name.len()).filter(|&i| name.is_char_boundary(i)).collect();
        let i = boundaries[at.index(boundaries.len())];
        let mut odd = name.clone();
        odd.insert(i, bad);
        let err = odd.parse::<KeyName>().unwrap_err().to_string();
        prop_assert!(err.starts_with("invalid key name"), "{}", err);
    }

    /// Empty segments and names over the limit are refused.
    #[test]
    fn empty_segments_and_long_names_are_refused(name in valid_name()) {
        for odd in [format!("/{name}"), format!("{name}/"), name.replacen('/', "//", 1)] {
            if odd != name {
                prop_assert!(odd.parse::<KeyName>().is_err(), "{} accepted", odd);
            }
        }
        let long = format!("{name}/{}", "a".repeat(MAX_KEY_NAME));
        prop_assert!(long.parse::<KeyName>().is_err());
    }

    #[test]
    fn a_key_id_round_trips_through_hex(bytes in any::<[u8; 16]>()) {
        let id = KeyId(bytes);
        let text = id.to_string();
        prop_assert_eq!(text.len(), 32);
        prop_assert_eq!(text.parse::<KeyId>().unwrap(), id);
        prop_assert!(text[..31].parse::<KeyId>().is_err());
    }
}
