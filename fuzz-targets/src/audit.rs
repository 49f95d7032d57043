//! Target `audit`: audit log text split by `lines_of`, checked by `Verifier::push` (through
//! `verify`), and each line given to `Chain::resume`.
//!
//! Asserts:
//! - `lines_of` splits without losing or adding a byte, and only the last line may lack its
//!   newline;
//! - `Chain::resume` accepts a line exactly when it is a JSON audit record whose seq can grow;
//! - an error names a line that exists;
//! - a log that verifies counts every complete line as a record (a torn line only at the end);
//!   it verifies again against its own head and is `Truncated` against a head one further;
//!   and the chain resumed from its last record appends a line that verifies after it.

use kms_core::audit::{self, Chain, GENESIS_PREV, Head, Record, VerifyError};

pub fn run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let lines: Vec<(String, bool)> = audit::lines_of(text).collect();
    let mut rebuilt = String::with_capacity(text.len());
    for (i, (line, newline)) in lines.iter().enumerate() {
        assert!(!line.contains('\n'));
        assert!(
            *newline || i + 1 == lines.len(),
            "only the last line may lack '\\n'"
        );
        rebuilt.push_str(line);
        if *newline {
            rebuilt.push('\n');
        }
    }
    assert_eq!(rebuilt, text, "lines_of lost or added bytes");

    for (line, _) in &lines {
        let record = serde_json::from_str::<Record>(line);
        let can_grow = record.as_ref().is_ok_and(|r| r.seq < u64::MAX);
        match Chain::resume(line) {
            Ok(chain) => {
                assert!(can_grow, "resumed from a line that is not a record");
                assert_eq!(record.ok().map(|r| r.seq), Some(chain.head().seq));
            }
            Err(e) => {
                assert!(!can_grow, "refused to resume from a record: {e}");
                assert!(matches!(e, VerifyError::Resume(_)));
            }
        }
    }

    let report = match audit::verify(lines.iter().cloned(), None) {
        Ok(r) => r,
        Err(e) => {
            let line = e.line();
            assert!(line.is_some_and(|n| (1..=lines.len()).contains(&n)), "{e}");
            let _ = e.to_string();
            return false;
        }
    };
    let complete = lines.len() - usize::from(report.torn_last_line);
    assert_eq!(report.records, complete as u64);
    assert!(!report.torn_last_line || lines.last().is_some_and(|(_, nl)| !nl));
    let Some((last, _)) = lines[..complete].last() else {
        assert_eq!(
            report.head,
            Head {
                seq: 0,
                hash: GENESIS_PREV.to_string()
            }
        );
        return false;
    };

    assert_eq!(
        audit::verify(lines.iter().cloned(), Some(&report.head)),
        Ok(report.clone())
    );
    let beyond = Head {
        seq: report.head.seq + 1,
        hash: report.head.hash.clone(),
    };
    assert!(matches!(
        audit::verify(lines.iter().cloned(), Some(&beyond)),
        Err(VerifyError::Truncated { .. })
    ));

    let mut chain = match Chain::resume(last) {
        Ok(c) => c,
        Err(e) => panic!("cannot resume from a verified record: {e}"),
    };
    assert_eq!(
        chain.head(),
        report.head,
        "resume does not reach the verified head"
    );
    if !report.torn_last_line {
        let next = chain.append(Record::default());
        let longer = lines.iter().cloned().chain([(next, true)]);
        match audit::verify(longer, None) {
            Ok(r) => assert_eq!(r.records, report.records + 1),
            Err(e) => panic!("the resumed chain's next line does not verify: {e}"),
        }
    }
    true
}
