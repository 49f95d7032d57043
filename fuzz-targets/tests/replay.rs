//! The stable replay of the fuzz corpus: every file of `fuzz/corpus/<target>/` through its
//! target's body, so `cargo test` checks on every run what a short fuzz run would, without
//! cargo-fuzz. Seeds named `valid-*` must also be accepted (the happy path still works), seeds
//! named `refused-*` refused (hostile inputs made on purpose); any other file (a crash kept as
//! a regression, an input libFuzzer found) must only pass the body's assertions.
//!
//! `regenerate_seed_corpus` (ignored) writes the `valid-*` seeds with the real encoders:
//! `cargo test -p kms-fuzz-targets --test replay -- --ignored regenerate_seed_corpus`.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kms_core::audit::{Chain, Record};
use kms_core::shares;
use kms_fuzz_targets::{TARGETS, backup, ciphertext, envelope, wrap};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| match e {
                Ok(e) => e.path(),
                Err(e) => panic!("reading {}: {e}", dir.display()),
            })
            .filter(|p| p.is_file())
            .collect(),
        Err(e) => panic!("the corpus folder {} is missing: {e}", dir.display()),
    };
    files.sort();
    files
}

/// STYLE.md 13 (fuzz targets for every parser that meets untrusted bytes): each target's
/// committed corpus passes its body, and its valid seeds are accepted.
#[test]
fn every_target_passes_its_corpus() {
    for (name, body) in TARGETS {
        let files = files(&corpus_dir(name));
        let valid = files
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("valid-"))
            })
            .count();
        assert!(valid > 0, "target {name} has no valid-* seed");
        for path in &files {
            let data = match fs::read(path) {
                Ok(d) => d,
                Err(e) => panic!("reading {}: {e}", path.display()),
            };
            let accepted = match catch_unwind(AssertUnwindSafe(|| body(&data))) {
                Ok(a) => a,
                Err(_) => panic!(
                    "target {name} failed on {} (see the panic above)",
                    path.display()
                ),
            };
            let must_accept = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("valid-"));
            assert!(
                accepted || !must_accept,
                "target {name} refused its valid seed {}",
                path.display()
            );
            let must_refuse = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("refused-"));
            assert!(
                !(accepted && must_refuse),
                "target {name} accepted {}, a seed it must refuse",
                path.display()
            );
        }
    }
}

/// The bodies are not vacuous: hostile inputs derived from the seeds (every single-byte change
/// and every truncation) are refused, and the bodies' checks hold on each.
#[test]
fn single_byte_changes_and_truncations_of_valid_seeds_are_refused() {
    for (name, body) in TARGETS {
        // A changed policy, share text or audit line may still be valid (a changed rule id, a
        // torn line): only the cryptographically bound formats must refuse every change.
        let format_bound = matches!(name, "ciphertext" | "envelope" | "backup");
        for path in files(&corpus_dir(name)) {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !file_name.starts_with("valid-") {
                continue;
            }
            // A wrapped import blob is bound too (AES-KWP authenticates it); a changed public
            // key or age recipient may still be a valid one.
            let bound = format_bound || (name == "wrap" && file_name.starts_with("valid-unwrap"));
            let Ok(seed) = fs::read(&path) else {
                panic!("reading {}", path.display());
            };
            // Every position of the bound formats; about 64 spread positions of the others,
            // whose bodies (TOML parsing twice, a chain verified four times) are slower.
            let step = if bound { 1 } else { (seed.len() / 64).max(1) };
            for i in (0..seed.len()).step_by(step) {
                let mut changed = seed.clone();
                changed[i] ^= 0x01;
                let accepted = body(&changed);
                assert!(
                    !(bound && accepted),
                    "{name}: {} with byte {i} changed opened",
                    path.display()
                );
                let accepted = body(&seed[..i]);
                // An envelope of an empty plaintext cut inside the header or the tag, or a
                // ciphertext cut anywhere, never opens.
                assert!(
                    !(bound && accepted),
                    "{name}: {} cut to {i} bytes opened",
                    path.display()
                );
            }
        }
    }
}

/// The backup seeds alone (deterministic), so adding them rewrites no other corpus.
#[test]
#[ignore = "writes fuzz/corpus/backup; run by hand after a format change"]
fn regenerate_backup_seeds() {
    write_backup_seeds();
}

fn write_backup_seeds() {
    use kms_core::backup::{Header, Record};
    let header = |records| Header {
        created_unix: 1_764_547_200,
        server_version: "0.1.0".into(),
        records,
    };
    write("backup", "valid-empty", &backup::encode(&header(0), &[]));
    let records: Vec<Record> = [
        "core/seal",
        "keys/0a/meta",
        "keys/0a/v/1",
        "sys/installation",
    ]
    .iter()
    .enumerate()
    .map(|(i, k)| Record {
        key: (*k).to_string(),
        version: i as u64 + 1,
        value: kms_fuzz_targets::pattern(16 * i),
    })
    .collect();
    write(
        "backup",
        "valid-four",
        &backup::encode(&header(4), &records),
    );
}

/// The wrap seeds alone, so adding them rewrites no other corpus. The blobs differ on every
/// run (a wrap draws a fresh KEK) and are valid either way; the key seeds are the same.
#[test]
#[ignore = "writes fuzz/corpus/wrap; run by hand after a format change"]
fn regenerate_wrap_seeds() {
    write_wrap_seeds();
    every_target_passes_its_corpus();
}

fn write_wrap_seeds() {
    use wrap::{MODE_AGE, MODE_RSA, MODE_UNWRAP, input};
    // Accepted: the fixed material wrapped to the fixed key; the fixed key's public half as
    // PEM and DER; an age recipient (the example of age's README), also shouted with spaces.
    write("wrap", "valid-unwrap", &wrap::seed_unwrap(&wrap::MATERIAL));
    let pem = wrap::public_pem();
    write(
        "wrap",
        "valid-recipient-pem",
        &input(MODE_RSA, pem.as_bytes()),
    );
    write(
        "wrap",
        "valid-recipient-der",
        &input(MODE_RSA, wrap::public_der()),
    );
    let age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    write("wrap", "valid-age", &input(MODE_AGE, age.as_bytes()));
    let shouted = format!("  {}\n", age.to_uppercase());
    write(
        "wrap",
        "valid-age-uppercase-spaces",
        &input(MODE_AGE, shouted.as_bytes()),
    );

    // Refused: 16 bytes of material (WrongLength), a blob cut inside its KWP part and one
    // with a byte too many (Malformed), a wrap to another key (DoesNotOpen).
    write(
        "wrap",
        "refused-unwrap-16-byte-material",
        &wrap::seed_unwrap(&[0x3c; 16]),
    );
    let blob = wrap::seed_unwrap(&wrap::MATERIAL);
    write("wrap", "refused-unwrap-cut", &blob[..blob.len() - 3]);
    let mut longer = blob.clone();
    longer.push(0);
    write("wrap", "refused-unwrap-one-byte-more", &longer);
    let other = kms_core::wrap::WrappingKey::generate()
        .and_then(|k| k.recipient())
        .and_then(|r| r.wrap(&wrap::MATERIAL));
    match other {
        Ok(b) => write("wrap", "refused-unwrap-other-key", &input(MODE_UNWRAP, &b)),
        Err(e) => panic!("wrapping to a fresh key: {e}"),
    }
    // Refused recipients: RSA-2048, RSA-3072 with e = 3 (both made once by openssl), a
    // PKCS#1 PEM block, a PEM cut before its END line, an age recipient with a bad checksum.
    let rsa2048 = include_bytes!("../keys/rsa2048.pub.der");
    write(
        "wrap",
        "refused-recipient-rsa2048",
        &input(MODE_RSA, rsa2048),
    );
    let e3 = include_bytes!("../keys/rsa3072-e3.pub.der");
    write("wrap", "refused-recipient-e3", &input(MODE_RSA, e3));
    let pkcs1 = pem.replace("PUBLIC KEY", "RSA PUBLIC KEY");
    write(
        "wrap",
        "refused-recipient-pkcs1-pem",
        &input(MODE_RSA, pkcs1.as_bytes()),
    );
    let cut = &pem[..pem.len() / 2];
    write(
        "wrap",
        "refused-recipient-pem-cut",
        &input(MODE_RSA, cut.as_bytes()),
    );
    let bad_sum = age.replace("8p", "9p");
    write(
        "wrap",
        "refused-age-checksum",
        &input(MODE_AGE, bad_sum.as_bytes()),
    );
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join(name), bytes)) {
        panic!("writing {}/{name}: {e}", dir.display());
    }
}

fn salt(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

fn audit_record(op: &str, key: Option<&str>, outcome: &str) -> Record {
    Record {
        time: "2026-12-01T03:00:00.000Z".into(),
        request_id: format!("req-{op}"),
        node: "node-1".into(),
        principal: "spiffe://kms.dev/dev".into(),
        peer: "127.0.0.1:50000".into(),
        operation: op.into(),
        key: key.map(str::to_string),
        version: key.map(|_| 1),
        outcome: outcome.into(),
        code: if outcome == "ok" {
            "OK"
        } else {
            "PERMISSION_DENIED"
        }
        .into(),
        error: (outcome != "ok").then(|| "default deny".into()),
        context_hmac: [("tenant".to_string(), "ab".repeat(32))]
            .into_iter()
            .collect(),
        ..Record::default()
    }
}

/// Writes the `valid-*` seeds with the real encoders. Ciphertext, policy and audit seeds come
/// out byte for byte the same every time; share and envelope seeds do not (a split and an
/// envelope nonce prefix are random by design), which is fine: they are valid either way.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a format change"]
fn regenerate_seed_corpus() {
    // Ciphertexts of pattern(n) under the fixed material and context.
    for (version, len, first) in [
        (1, 0, 0x10),
        (1, 5, 0x20),
        (7, 64, 0x30),
        (u32::MAX, 300, 0x40),
    ] {
        write(
            "ciphertext",
            &format!("valid-v{version}-{len}"),
            &ciphertext::seed(version, len, salt(first)),
        );
    }

    // Share texts and commitments: the target's fixed 2-of-3 set, and a fresh 1-of-1.
    for (i, text) in kms_fuzz_targets::shares::SHARES.iter().enumerate() {
        write("shares", &format!("valid-share-{}", i + 1), text.as_bytes());
    }
    let shouted = format!("  {}\n", kms_fuzz_targets::shares::SHARES[1].to_uppercase());
    write("shares", "valid-share-uppercase-spaces", shouted.as_bytes());
    write(
        "shares",
        "valid-commitments-2of3",
        &kms_fuzz_targets::shares::commitments().to_bytes(),
    );
    let Ok((_, commitments, _, one)) = shares::split(1, 1) else {
        panic!("split(1, 1)");
    };
    write("shares", "valid-commitments-1of1", &commitments.to_bytes());
    write("shares", "valid-share-1of1", one[0].to_text().as_bytes());

    // Policies: each example file alone, and all of them as one file.
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut all = String::new();
    for path in files(&policies) {
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            panic!("reading {}", path.display());
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        write(
            "policy",
            &format!("valid-{}", stem.unwrap_or_default()),
            text.as_bytes(),
        );
        all.push_str(&text);
        all.push('\n');
    }
    write("policy", "valid-all-examples", all.as_bytes());

    // Envelope files of pattern(n): empty, one short chunk, one full chunk, three chunks.
    for (len, wrapped, chunk) in [
        (0, 1, 1024),
        (100, 9, 1024),
        (1024, 32, 1024),
        (2500, 64, 1024),
    ] {
        let wrapped_key = vec![0xee; wrapped];
        write(
            "envelope",
            &format!("valid-{len}-bytes"),
            &envelope::seed(len, &wrapped_key, chunk),
        );
    }

    // Audit logs: three records; the same with a torn last line; one record without '\n'.
    let mut chain = Chain::genesis();
    let lines: Vec<String> = [
        audit_record("create", Some("payments/cards"), "ok"),
        audit_record("encrypt", Some("payments/cards"), "ok"),
        audit_record("policy-reload", None, "denied"),
    ]
    .into_iter()
    .map(|r| chain.append(r))
    .collect();
    let three: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write("audit", "valid-three", three.as_bytes());
    let torn = format!("{three}{}", &lines[0][..40]);
    write("audit", "valid-torn-last-line", torn.as_bytes());
    write("audit", "valid-one-without-newline", lines[0].as_bytes());
    write_backup_seeds();
    write_wrap_seeds();

    // Every seed written must be accepted by its body.
    every_target_passes_its_corpus();
}
