//! The server's diagnostic logs (stderr, docs/logging.md): JSON lines when asked or when stderr
//! is not a terminal, human text when asked, never a secret, and a request's lines carry its
//! audit record's request id.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use kms_client::proto as pb;
use kms_tests::{Installation, bin, init, unseal_with};

/// The server's log, a JSON object per line; panics naming the first line that is not one, or
/// lacks `timestamp`, `level`, `target` or `message`.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(v[field].is_string(), "no {field} in: {line}");
            }
            v
        })
        .collect()
}

/// Standard and URL-safe base64 (no padding) without a crate: enough to search for the
/// encoded form.
fn b64(b: &[u8]) -> [String; 2] {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    let url = s.replace('+', "-").replace('/', "_");
    [s, url]
}

/// Every form in which `secret` could be written to a log: raw, hex (both cases), base64
/// (standard and URL-safe, whole and from its 3-byte-aligned middle) and Rust's `{:?}` of the
/// bytes.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    out.push(hex::encode(secret).into_bytes());
    out.push(hex::encode_upper(secret).into_bytes());
    for s in b64(secret) {
        // Drop the last group: its padding-free tail differs when the secret is cut.
        out.push(s.as_bytes()[..s.len() - 4].to_vec());
    }
    out.push(
        format!("{secret:?}")
            .trim_end_matches(']')
            .as_bytes()
            .to_vec(),
    );
    out
}

fn assert_absent(log: &[u8], what: &str, secret: &[u8]) {
    for needle in forms(secret) {
        assert!(
            !log.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{what} ({}) found in the server log",
            String::from_utf8_lossy(&needle)
        );
    }
}

/// A real run at debug level (init, restart, unseal with a known share, create a key,
/// encrypt and decrypt known plaintexts under a known context, generate a data key, a failed
/// decryption) writes a log in which every line is a JSON object with timestamp, level, target
/// and message, and none of the secrets appears in any form.
/// [SNC 12.6–12.8: logs of security-relevant activity, timestamped; no secret in logs]
#[tokio::test]
async fn json_log_of_a_real_run_holds_no_secret() {
    let inst = Installation::new();
    let server = inst.start_debug_json();
    let share = init(&server, 1, 1).await.remove(0);
    unseal_with(&server, std::slice::from_ref(&share), &[1]).await;
    // Restarted: it comes back sealed, and the known share unseals it again.
    drop(server);
    let server = inst.start_debug_json();
    unseal_with(&server, std::slice::from_ref(&share), &[1]).await;

    let c = server.client().await;
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: "logging/k".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let context_value = "tenant-LOGSECRET-93c1e7";
    let context: HashMap<String, String> =
        HashMap::from([("tenant".to_string(), context_value.to_string())]);
    let plaintexts: [&[u8]; 2] = [
        b"LOG-TEST-PLAINTEXT-one-5b0e2d",
        b"LOG-TEST-PLAINTEXT-two-\x00\x01\xfe-a41f",
    ];
    for p in plaintexts {
        let ct = c
            .encrypt("logging/k", p.to_vec(), context.clone())
            .await
            .unwrap()
            .ciphertext;
        let back = c.decrypt(ct, context.clone()).await.unwrap();
        assert_eq!(back.plaintext, p);
    }
    let dk = c
        .generate_data_key("logging/k", context.clone())
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    let unwrapped = c.decrypt(dk.ciphertext, context.clone()).await.unwrap();
    assert_eq!(unwrapped.plaintext, dk.plaintext);
    // A failure is logged (if at all) without what was asked.
    assert!(
        c.decrypt(b"garbage-LOG-TEST".to_vec(), context.clone())
            .await
            .is_err()
    );
    drop(c);
    // A clean stop: its lines (sealing, audit head) are in the log too.
    assert!(server.terminate());

    let path = inst.root.path().join("server.log");
    let lines = json_lines(&path);
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    // The run was logged (so the absence below means something).
    for expected in [
        "kms initialised",
        "kms unsealed",
        "key created",
        "kms sealed",
    ] {
        assert!(
            messages.contains(&expected),
            "no {expected:?} in {messages:?}"
        );
    }
    assert!(
        lines.iter().all(|l| {
            let t = l["timestamp"].as_str().unwrap();
            t.ends_with('Z') && t.contains('T')
        }),
        "timestamps are not UTC ISO 8601"
    );

    let log = std::fs::read(&path).unwrap();
    for (i, p) in plaintexts.iter().enumerate() {
        assert_absent(&log, &format!("plaintext {i}"), p);
    }
    assert_absent(&log, "data key", &dk.plaintext);
    assert_absent(&log, "share", share.as_bytes());
    assert_absent(&log, "context value", context_value.as_bytes());
}

/// A log line about a request carries the request id of that request's audit record (the
/// `request_id` of the JSON line), so an operator can go from one to the other.
/// [SNC 12.6: security-relevant activity traceable]
#[tokio::test]
async fn request_log_lines_carry_the_audit_request_id() {
    let inst = Installation::new();
    let server = inst.start_debug_json();
    let share = init(&server, 1, 1).await.remove(0);
    unseal_with(&server, &[share], &[1]).await;
    let c = server.client().await;
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: "logging/traced".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    drop(c);
    assert!(server.terminate());

    let lines = json_lines(&inst.root.path().join("server.log"));
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(inst.root.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let audit_id = |operation: &str| {
        let ids: Vec<&str> = audit
            .iter()
            .filter(|r| r["operation"] == operation)
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{operation} records: {audit:?}");
        ids[0].to_string()
    };
    let log_id = |message: &str| {
        let line = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line"));
        line["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no request id in {line}"))
            .to_string()
    };
    assert_eq!(log_id("key created"), audit_id("create-key"));
    assert_eq!(log_id("kms unsealed"), audit_id("unseal"));
    assert_eq!(log_id("kms initialised"), audit_id("init"));
    assert_eq!(
        lines
            .iter()
            .find(|l| l["message"] == "key created")
            .unwrap()["operation"],
        "create-key"
    );
    // Lines not about a request carry none.
    let startup = lines
        .iter()
        .find(|l| l["target"] == "kms_server::harden")
        .unwrap();
    assert!(startup.get("request_id").is_none(), "{startup}");
}

/// Runs `kms-server --config MISSING` (it logs its hardening line, then stops on the missing
/// file) with `args` and `env`; returns its stderr.
fn stderr_of_failed_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("kms-server"));
    cmd.env("KMS_LOG", "info")
        .env_remove("KMS_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .args(args)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

/// The format: JSON when stderr is not a terminal (here a pipe) and nothing is asked;
/// `--log-format human` or `KMS_LOG_FORMAT=human` give text, without colour codes (not a
/// terminal); the flag wins over the variable; an unknown format is refused by name.
#[test]
fn format_follows_flag_variable_and_terminal() {
    let is_json = |line: &str| serde_json::from_str::<serde_json::Value>(line).is_ok();
    let log_lines = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| !l.starts_with("kms-server:"))
            .map(str::to_string)
            .collect()
    };

    let default = stderr_of_failed_start(&[], &[]);
    let lines = log_lines(&default);
    assert!(!lines.is_empty(), "{default}");
    assert!(lines.iter().all(|l| is_json(l)), "{default}");
    // The error that stopped it stays a plain sentence for the operator.
    assert!(
        default.contains("kms-server: cannot read config file"),
        "{default}"
    );

    for (args, env) in [
        (&["--log-format", "human"][..], &[][..]),
        (&[][..], &[("KMS_LOG_FORMAT", "human")][..]),
        (
            &["--log-format", "human"][..],
            &[("KMS_LOG_FORMAT", "json")][..],
        ),
    ] {
        let text = stderr_of_failed_start(args, env);
        let lines = log_lines(&text);
        assert!(!lines.is_empty(), "{args:?} {env:?}: {text}");
        assert!(
            lines
                .iter()
                .all(|l| !is_json(l) && l.contains("kms_server::harden")),
            "{args:?} {env:?}: {text}"
        );
        assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
    }

    let json = stderr_of_failed_start(&["--log-format", "json"], &[("KMS_LOG_FORMAT", "human")]);
    assert!(log_lines(&json).iter().all(|l| is_json(l)), "{json}");

    let bad = stderr_of_failed_start(&["--log-format", "xml"], &[]);
    assert!(
        bad.contains("invalid value 'xml'") && bad.contains("human") && bad.contains("json"),
        "{bad}"
    );
}
