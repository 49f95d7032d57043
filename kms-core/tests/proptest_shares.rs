//! Property tests of secret sharing: share text and commitment bytes round-trip for any split,
//! any t distinct shares recover the root, a typo is never taken for a share.
//!
//! 16 cases per property (each case is a split, elliptic-curve work); raise with
//! `PROPTEST_CASES=1000 cargo test -p kms-core --test proptest_shares`.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use kms_core::shares::{self, Commitments, Share};
use proptest::prelude::*;

mod common;

fn config() -> ProptestConfig {
    common::config(16)
}

/// (n, t) with 1 <= t <= n <= 6 and t >= 2 unless n == 1, as `split` requires.
fn n_and_t() -> impl Strategy<Value = (u8, u8)> {
    (1u8..=6).prop_flat_map(|n| {
        let t = if n == 1 { 1..=1 } else { 2..=n };
        (Just(n), t)
    })
}

proptest! {
    #![proptest_config(config())]

    /// Every share's text parses back to the same share (also typed in uppercase with spaces
    /// around), the commitments' bytes parse back to the same commitments, and any t distinct
    /// shares, in any order, recover the root secret.
    #[test]
    fn split_encode_decode_combine((n, t) in n_and_t(), order in any::<u64>()) {
        let (root, commitments, set_id, all) = shares::split(n, t).unwrap();

        let bytes = commitments.to_bytes();
        let back = Commitments::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &commitments);
        prop_assert_eq!(back.to_bytes(), bytes);

        let mut parsed = Vec::new();
        for share in &all {
            let text = share.to_text();
            let again = Share::from_str(&text).unwrap();
            prop_assert_eq!(again.index(), share.index());
            prop_assert_eq!(again.set_id(), set_id);
            prop_assert!(again.to_text() == text);
            let shouted = format!(" \t{}\n", text.to_uppercase());
            prop_assert!(Share::from_str(&shouted).unwrap().to_text() == text);
            shares::verify(&again, &back).unwrap();
            parsed.push(again);
        }

        // t shares picked by a rotation of the list, reversed when `order` is odd.
        let start = (order % u64::from(n)) as usize;
        let mut picked: Vec<Share> = parsed.iter().cycle().skip(start).take(usize::from(t)).cloned().collect();
        if order % 2 == 1 {
            picked.reverse();
        }
        prop_assert!(shares::combine(&picked, &back).unwrap().ct_eq(&root));
        if t > 1 {
            let too_few = shares::combine(&picked[1..], &back);
            let is_not_enough = matches!(too_few, Err(shares::ShareError::NotEnough { .. }));
            prop_assert!(is_not_enough);
        }
    }

    /// A single changed character of a share's text (a typo) is refused: the checksum or the
    /// format catches it; the text never parses to another share.
    #[test]
    fn one_changed_character_is_refused(
        at in any::<prop::sample::Index>(),
        replacement in "[0-9a-zA-Z -]",
    ) {
        let (_, _, _, all) = shares::split(3, 2).unwrap();
        let text = all[0].to_text();
        let i = at.index(text.len());
        let mut typo = text.to_string();
        typo.replace_range(i..=i, &replacement);
        // Only a change of case leaves the same share (the format is case-insensitive).
        prop_assume!(!typo.eq_ignore_ascii_case(&text));
        prop_assert!(Share::from_str(&typo).is_err(), "{} accepted", typo);
    }
}
