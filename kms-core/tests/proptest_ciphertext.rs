//! Property tests of the ciphertext format: seal/open and the header round-trip for any
//! plaintext, context, key id and version; any change is refused.
//!
//! 64 cases per property; `PROPTEST_CASES=10000 cargo test -p kms-core --test proptest_ciphertext`
//! for a longer run.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_core::Secret32;
use kms_core::ciphertext::{self, CiphertextError, EncryptionContext, Header, KeyId, OVERHEAD};
use proptest::prelude::*;

mod common;

fn config() -> ProptestConfig {
    common::config(64)
}

/// Context entries within every limit of `EncryptionContext::new`: non-empty keys without
/// control characters, distinct, short enough that 8 entries stay under the total.
fn context_entries() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[^\\p{Cc}]{1,32}", ".{0,64}", 0..8)
        .prop_filter("within the byte limits", |m| {
            m.keys().all(|k| k.len() <= EncryptionContext::MAX_KEY_LEN)
                && m.values()
                    .all(|v| v.len() <= EncryptionContext::MAX_VALUE_LEN)
        })
        .prop_map(|m| m.into_iter().collect())
}

fn context(entries: &[(String, String)]) -> EncryptionContext {
    EncryptionContext::new(entries.iter().cloned()).expect("generated within the limits")
}

proptest! {
    #![proptest_config(config())]

    /// RecommandationModeChiff (authenticated encryption): open(seal(x)) == x for any
    /// plaintext and context, and the header reads back the key id and version sealed.
    #[test]
    fn seal_then_open_round_trips(
        material in any::<[u8; 32]>(),
        key_id in any::<[u8; 16]>(),
        version in 1..=u32::MAX,
        entries in context_entries(),
        plaintext in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let material = Secret32::from_bytes(material);
        let ctx = context(&entries);
        let ct = ciphertext::seal(&material, KeyId(key_id), version, &ctx, &plaintext).unwrap();
        prop_assert_eq!(ct.len(), plaintext.len() + OVERHEAD);
        prop_assert_eq!(
            ciphertext::parse_header(&ct).unwrap(),
            Header { key_id: KeyId(key_id), version }
        );
        prop_assert_eq!(&ciphertext::open(&material, &ct, &ctx).unwrap()[..], &plaintext[..]);

        // The context's order of insertion does not matter.
        let reversed = context(&entries.iter().rev().cloned().collect::<Vec<_>>());
        prop_assert_eq!(reversed.canonical_bytes(), ctx.canonical_bytes());
        prop_assert_eq!(&ciphertext::open(&material, &ct, &reversed).unwrap()[..], &plaintext[..]);
    }

    /// RecommandationModeChiff (full tag, whole header authenticated): any single changed
    /// byte and any truncation is refused; never another plaintext.
    #[test]
    fn any_change_or_cut_is_refused(
        plaintext in prop::collection::vec(any::<u8>(), 0..512),
        entries in context_entries(),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
        cut in any::<prop::sample::Index>(),
    ) {
        let material = Secret32::from_bytes([9; 32]);
        let ctx = context(&entries);
        let ct = ciphertext::seal(&material, KeyId([1; 16]), 1, &ctx, &plaintext).unwrap();
        let mut changed = ct.clone();
        changed[at.index(ct.len())] ^= flip;
        prop_assert!(ciphertext::open(&material, &changed, &ctx).is_err());
        let cut = cut.index(ct.len());
        prop_assert!(ciphertext::open(&material, &ct[..cut], &ctx).is_err());
    }

    /// The encryption context is bound: one more entry, or one value changed, is refused with
    /// the opaque authentication error.
    #[test]
    fn another_context_is_refused(
        entries in context_entries().prop_filter("non-empty", |e| !e.is_empty()),
        pick in any::<prop::sample::Index>(),
        plaintext in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let material = Secret32::from_bytes([3; 32]);
        let ct = ciphertext::seal(&material, KeyId([2; 16]), 3, &context(&entries), &plaintext)
            .unwrap();
        let mut changed = entries.clone();
        let i = pick.index(changed.len());
        changed[i].1.push('x');
        prop_assert_eq!(
            ciphertext::open(&material, &ct, &context(&changed)).unwrap_err(),
            CiphertextError::Authentication
        );
        let mut extra = entries.clone();
        extra.retain(|(k, _)| k != "\u{2603}extra");
        extra.push(("\u{2603}extra".into(), String::new()));
        prop_assert_eq!(
            ciphertext::open(&material, &ct, &context(&extra)).unwrap_err(),
            CiphertextError::Authentication
        );
    }
}
