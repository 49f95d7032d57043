//! Property tests of the audit log: any record serialises and parses back; a chain of any
//! records verifies, and any single-byte change in any line fails verification.
//!
//! 64 cases per property; `PROPTEST_CASES=10000 cargo test -p kms-core --test proptest_audit`
//! for a longer run.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_core::audit::{self, Chain, Record, VerifyError};
use proptest::prelude::*;

mod common;

fn config() -> ProptestConfig {
    common::config(64)
}

/// Any record: any text in every field (quotes, backslashes, control characters, any
/// Unicode), any options, any context map. `seq` and `prev` are set by the chain.
fn record() -> impl Strategy<Value = Record> {
    let text = || ".{0,24}";
    (
        (text(), text(), text(), text(), text(), text()),
        (
            prop::option::of(text()),
            prop::option::of(any::<u32>()),
            text(),
            text(),
            prop::option::of(text()),
            prop::collection::btree_map(text(), "[0-9a-f]{64}", 0..4),
        ),
    )
        .prop_map(
            |(
                (time, request_id, node, principal, peer, operation),
                (key, version, outcome, code, error, context_hmac),
            )| Record {
                seq: 0,
                time,
                request_id,
                node,
                principal,
                peer,
                operation,
                key,
                version,
                outcome,
                code,
                error,
                context_hmac,
                prev: String::new(),
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// A record is one line of JSON that parses back to the same record, with the seq and
    /// prev the chain gave it.
    #[test]
    fn a_record_serialises_to_one_line_and_parses_back(r in record()) {
        let mut chain = Chain::genesis();
        let line = chain.append(r.clone());
        prop_assert!(!line.contains('\n'));
        let back: Record = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(back.seq, 1);
        prop_assert_eq!(back.prev.as_str(), audit::GENESIS_PREV);
        prop_assert_eq!(Record { seq: 0, prev: String::new(), ..back }, r);
    }

    /// SecNumCloud 12.6–12.8 (log integrity): a chain of any records verifies up to its head,
    /// resumes from its last line, and any single changed byte, in any line (its newline
    /// included), fails verification against the sealed head.
    #[test]
    fn a_chain_verifies_and_any_changed_byte_fails(
        records in prop::collection::vec(record(), 1..8),
        at in any::<prop::sample::Index>(),
        replacement in 0u8..0x80,
    ) {
        let mut chain = Chain::genesis();
        let lines: Vec<String> = records.into_iter().map(|r| chain.append(r)).collect();
        let head = chain.head();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();

        let report = audit::verify(audit::lines_of(&text), Some(&head)).unwrap();
        prop_assert_eq!(report.records, lines.len() as u64);
        prop_assert_eq!(&report.head, &head);
        prop_assert!(!report.torn_last_line);
        let last = lines.last().unwrap();
        prop_assert_eq!(Chain::resume(last).unwrap().head(), head.clone());

        // One ASCII byte replaced by another ASCII byte, so the text stays UTF-8.
        let ascii: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| b.is_ascii()).map(|(i, _)| i).collect();
        let i = ascii[at.index(ascii.len())];
        prop_assume!(text.as_bytes()[i] != replacement);
        let mut bytes = text.into_bytes();
        bytes[i] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        let result = audit::verify(audit::lines_of(&changed), Some(&head));
        prop_assert!(result.is_err(), "byte {} set to {:#04x} still verifies", i, replacement);
        let named = result.unwrap_err().line();
        // The error points at a line (changed, or the one whose prev no longer matches).
        prop_assert!(named.is_some_and(|n| n >= 1), "{:?}", named);
    }

    /// Cutting the tail after any line is caught against the sealed head.
    #[test]
    fn a_cut_tail_is_truncated(records in prop::collection::vec(record(), 2..6), keep in any::<prop::sample::Index>()) {
        let mut chain = Chain::genesis();
        let lines: Vec<String> = records.into_iter().map(|r| chain.append(r)).collect();
        let keep = keep.index(lines.len() - 1) + 1;
        let result = audit::verify(lines[..keep].iter().map(|l| (l.clone(), true)), Some(&chain.head()));
        let is_truncated = matches!(result, Err(VerifyError::Truncated { .. }));
        prop_assert!(is_truncated, "{:?}", result);
    }
}
