//! Storage corruption: bytes flipped in, files truncated or deleted from the sled data
//! directory while the server is stopped. Whatever the damage, the server never panics, never
//! hangs, never returns a wrong plaintext: it refuses to start (or to unseal) with a clear
//! message, or it serves and every acknowledged ciphertext decrypts to exactly its plaintext or
//! fails with a clear error. What happens for each kind of damage is printed (see
//! docs/corruption.md for the findings).

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kms_client::proto as pb;
use kms_client::{Client, ClientError, ConnectOptions};
use kms_server::storage::{Backend, Expect, SledBackend};
use kms_tests::{Installation, bin, copy_dir, start_unsealed};
use tonic::Code;

/// Generous bound for a start or a call; only a hang reaches it.
const BOUND: Duration = Duration::from_secs(60);

/// An acknowledged encryption: it must decrypt to exactly `plaintext`, or fail clearly.
struct Ack {
    key: String,
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
    context: HashMap<String, String>,
}

fn ctx(key: &str) -> HashMap<String, String> {
    HashMap::from([("key".to_string(), key.to_string())])
}

/// Creates `n` keys (the odd ones rotated once), encrypts under every version, then stops the
/// server cleanly. Returns the share and the acknowledged ciphertexts.
async fn populate(inst: &Installation, n: usize) -> (String, Vec<Ack>) {
    let mut share = None;
    let server = start_unsealed(inst, &mut share).await;
    let c = server.client().await;
    let mut acks = Vec::new();
    for i in 0..n {
        let key = format!("corrupt/k{i}");
        let req = pb::CreateKeyRequest {
            name: key.clone(),
            ..Default::default()
        };
        c.call(c.key_admin().create_key(req)).await.unwrap();
        let rounds = if i % 2 == 1 { 2 } else { 1 };
        for r in 0..rounds {
            if r > 0 {
                let req = pb::RotateKeyRequest { name: key.clone() };
                c.call(c.key_admin().rotate_key(req)).await.unwrap();
            }
            let plaintext = format!("plaintext {i} round {r}").into_bytes();
            let e = c.encrypt(&key, plaintext.clone(), ctx(&key)).await.unwrap();
            acks.push(Ack {
                key: key.clone(),
                ciphertext: e.ciphertext,
                plaintext,
                context: ctx(&key),
            });
        }
    }
    drop(c);
    server.kill();
    (share.unwrap(), acks)
}

/// A server process started by [`start`], killed on drop.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a start on a damaged directory went.
enum Start {
    Up(Running),
    /// Exited before listening: its exit code and its log.
    Refused {
        code: Option<i32>,
        log: String,
    },
}

fn log_path(inst: &Installation) -> PathBuf {
    inst.root.path().join("corruption.log")
}

/// Starts the server with a fresh log; readiness is its "listening on" line. Panics if it
/// neither listens nor exits within [`BOUND`] (a hang).
fn start(inst: &Installation) -> Start {
    let log = std::fs::File::create(log_path(inst)).unwrap();
    let mut child = Command::new(bin("kms-server"))
        .arg("--config")
        .arg(inst.root.path().join("config.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("kms-server listening on ") {
                let _ = tx.send(Some(rest.split_whitespace().next().unwrap().to_string()));
                sent = true;
                break;
            }
        }
        if !sent {
            let _ = tx.send(None);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(BOUND) {
        Ok(Some(addr)) => Start::Up(Running {
            child,
            addr: format!("https://{addr}"),
        }),
        Ok(None) => {
            let code = child.wait().unwrap().code();
            Start::Refused {
                code,
                log: std::fs::read_to_string(log_path(inst)).unwrap(),
            }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server neither listened nor exited within {BOUND:?}; log:\n{}",
                std::fs::read_to_string(log_path(inst)).unwrap()
            );
        }
    }
}

async fn connect(inst: &Installation, r: &Running) -> Client {
    let files = inst.pki.client("client");
    let opts = ConnectOptions {
        addr: r.addr.clone(),
        ca_cert: inst.pki.ca(),
        client_cert: files.cert,
        client_key: files.key,
        server_name: Some("localhost".into()),
    };
    Client::connect(&opts).await.unwrap()
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("call hung past the bound")
}

fn status_of(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// The log of a run must show no panic.
fn assert_no_panic(log: &str, case: &str) {
    assert!(
        !log.contains("panicked"),
        "{case}: the server panicked; log:\n{log}"
    );
}

/// What one damaged start came to, for the summary.
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Exited before listening, non-zero, with this message.
    RefusedToStart(String),
    /// Listened; the seal configuration could not be read as initialised.
    NotInitialised,
    /// Listened; unseal refused with this status.
    UnsealRefused(String),
    /// Unsealed: how many acknowledged ciphertexts decrypted exactly and how many failed
    /// (with which codes).
    #[default]
    Served,
    Partial(usize, Vec<String>),
}

/// Starts on the (damaged) data directory and checks every guarantee. Returns the outcome.
async fn check_start(inst: &Installation, share: &str, acks: &[Ack], case: &str) -> Outcome {
    let running = match start(inst) {
        Start::Refused { code, log } => {
            assert_no_panic(&log, case);
            assert!(
                code.is_some_and(|c| c != 0),
                "{case}: exited {code:?} before listening; log:\n{log}"
            );
            let msg = log
                .lines()
                .find_map(|l| l.strip_prefix("kms-server: "))
                .unwrap_or_else(|| panic!("{case}: no clear exit message; log:\n{log}"));
            return Outcome::RefusedToStart(msg.to_string());
        }
        Start::Up(r) => r,
    };
    let c = connect(inst, &running).await;
    let outcome = match bounded(c.unseal(share)).await {
        Err(e) => {
            let s = status_of(e);
            // An uninitialised-looking store (the seal record and everything else gone) is
            // "not initialised", never a silent init.
            if s.code() == Code::FailedPrecondition && s.message().contains("not initialised") {
                Outcome::NotInitialised
            } else {
                assert_clear(&s, case);
                Outcome::UnsealRefused(format!("{:?}: {}", s.code(), s.message()))
            }
        }
        Ok(st) => {
            assert!(!st.sealed, "{case}: unseal answered but still sealed");
            let mut ok = 0;
            let mut failed = Vec::new();
            for a in acks {
                match bounded(c.decrypt(a.ciphertext.clone(), a.context.clone())).await {
                    Ok(d) => {
                        assert_eq!(
                            d.plaintext, a.plaintext,
                            "{case}: WRONG PLAINTEXT for a ciphertext of {}",
                            a.key
                        );
                        ok += 1;
                    }
                    Err(e) => {
                        let s = status_of(e);
                        assert_clear(&s, case);
                        failed.push(format!("{:?}", s.code()));
                    }
                }
            }
            failed.sort();
            if failed.is_empty() {
                Outcome::Served
            } else {
                Outcome::Partial(ok, failed)
            }
        }
    };
    drop(c);
    drop(running);
    assert_no_panic(&std::fs::read_to_string(log_path(inst)).unwrap(), case);
    outcome
}

/// A clear error: a specific code and a message a person can act on.
fn assert_clear(s: &tonic::Status, case: &str) {
    assert!(
        !matches!(s.code(), Code::Unknown | Code::Ok | Code::Cancelled),
        "{case}: unclear status {s:?}"
    );
    assert!(s.message().len() > 10, "{case}: terse message {s:?}");
}

/// The data directory's files (relative names), sorted.
fn data_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A populated installation with a pristine copy of its data directory to restore between
/// damages.
struct Fixture {
    inst: Installation,
    share: String,
    acks: Vec<Ack>,
    pristine: PathBuf,
}

impl Fixture {
    /// The data directory as a killed server leaves it: `conf` and the log `db`.
    async fn new() -> Self {
        Self::build(false).await
    }

    /// Also with the snapshot (`snap.*`) sled writes when it is closed cleanly, and the log
    /// file grown to a whole segment.
    async fn with_snapshot() -> Self {
        Self::build(true).await
    }

    async fn build(snapshot: bool) -> Self {
        let inst = Installation::new();
        let (share, acks) = populate(&inst, 6).await;
        if snapshot {
            drop(SledBackend::open(&inst.data_dir()).unwrap());
        }
        let pristine = inst.root.path().join("pristine");
        copy_dir(&inst.data_dir(), &pristine);
        Self {
            inst,
            share,
            acks,
            pristine,
        }
    }

    fn restore(&self) {
        copy_dir(&self.pristine, &self.inst.data_dir());
    }

    async fn check(&self, case: &str) -> Outcome {
        check_start(&self.inst, &self.share, &self.acks, case).await
    }
}

fn summarize(title: &str, results: &BTreeMap<Outcome, Vec<String>>) {
    eprintln!("== {title}");
    for (outcome, cases) in results {
        let shown: Vec<&String> = cases.iter().take(12).collect();
        eprintln!(
            "  {outcome:?}: {} case(s), e.g. {shown:?}{}",
            cases.len(),
            if cases.len() > 12 { " ..." } else { "" }
        );
    }
}

/// A deterministic sample of offsets: every byte of the first 64 (headers), then every
/// `step`-th byte, then the last 64 (the newest log entries).
fn offsets(len: usize, step: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len.min(64)).collect();
    v.extend((64..len).step_by(step));
    v.extend(len.saturating_sub(64)..len);
    v.sort_unstable();
    v.dedup();
    v
}

/// One byte flipped (all bits) at offsets across every file of the data directory. For each:
/// no panic, no hang, no wrong plaintext; a refusal or every ciphertext exact-or-clear-error.
/// [RègleVérificationUtilisabilité-1: integrity checked before use; SNC 10.5: keys in a
///  protected container whose tampering is detected]
#[tokio::test]
async fn flipped_bytes_are_detected_never_a_wrong_plaintext() {
    let f = Fixture::new().await;
    let files = data_files(&f.pristine);
    assert!(files.contains(&"db".to_string()), "{files:?}");
    let mut results: BTreeMap<Outcome, Vec<String>> = BTreeMap::new();
    for name in &files {
        let len = std::fs::metadata(f.pristine.join(name)).unwrap().len() as usize;
        // About 120 starts over the log; every byte of small files.
        let step = (len / 120).max(1);
        for off in offsets(len, step) {
            f.restore();
            let path = f.inst.data_dir().join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[off] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            let case = format!("{name}@{off}");
            let outcome = f.check(&case).await;
            results.entry(outcome).or_default().push(case);
        }
    }
    summarize("byte flips", &results);
    // The sweep must have reached both ends: some flips are refused, some served.
    assert!(
        results.len() >= 2,
        "every flip gave one outcome: {results:?}"
    );
    assert_no_silent_rollback(&results, "db@");
}

/// sled drops a damaged log entry and every later one without a word; the rollback check
/// (`kms-generation`, see kms-server/src/storage/sled.rs) turns that into a refusal to start.
/// So damage to the log `db` is refused or harmless (everything served), never an older
/// state served as if current (fewer keys, "not initialised"); and at least one case is
/// refused as a rollback, so the check is exercised.
fn assert_no_silent_rollback(results: &BTreeMap<Outcome, Vec<String>>, db_case: &str) {
    let mut rolled_back = 0;
    for (outcome, cases) in results {
        for case in cases.iter().filter(|c| c.starts_with(db_case)) {
            match outcome {
                Outcome::Served => {}
                Outcome::RefusedToStart(m) if m.contains("rolled back") => rolled_back += 1,
                Outcome::RefusedToStart(_) => {}
                other => panic!("{case}: the older state was served: {other:?}"),
            }
        }
    }
    assert!(
        rolled_back > 0,
        "no damage to the log was refused as a rollback: {results:?}"
    );
}

/// Files truncated at several lengths, and each file deleted: the same guarantees as for flips.
/// The outcomes are printed; a store that lost every record reports "not initialised" and
/// never initialises itself. [RègleVérificationUtilisabilité-1; SNC 10.5]
#[tokio::test]
async fn truncated_or_deleted_files_are_detected_never_a_wrong_plaintext() {
    let f = Fixture::new().await;
    let files = data_files(&f.pristine);
    let mut results: BTreeMap<Outcome, Vec<String>> = BTreeMap::new();
    for name in &files {
        let len = std::fs::metadata(f.pristine.join(name)).unwrap().len() as usize;
        let mut lengths = vec![0, 1, 8, len / 4, len / 2, 3 * len / 4, len - 1];
        lengths.sort_unstable();
        lengths.dedup();
        for cut in lengths {
            f.restore();
            let path = f.inst.data_dir().join(name);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let case = format!("{name} cut to {cut} of {len}");
            let outcome = f.check(&case).await;
            results.entry(outcome).or_default().push(case);
        }
        f.restore();
        std::fs::remove_file(f.inst.data_dir().join(name)).unwrap();
        let case = format!("{name} deleted");
        let outcome = f.check(&case).await;
        results.entry(outcome).or_default().push(case);
    }
    summarize("truncations and deletions", &results);
    // Cutting the log's last byte loses at most its last entries; cutting it to nothing loses
    // everything: at least two outcomes, or the damage did not reach the server.
    assert!(results.len() >= 2, "{results:?}");
    assert_no_silent_rollback(&results, "db ");
}

/// The key id a ciphertext names (its header), as it appears in storage paths.
fn key_id_of(ct: &[u8]) -> String {
    kms_core::ciphertext::parse_header(ct)
        .unwrap()
        .key_id
        .to_string()
}

async fn flip_record(b: &SledBackend, path: &str) {
    let mut v = b.get(path).await.unwrap().unwrap().value;
    let at = v.len() / 2;
    v[at] ^= 0x01;
    b.put(path, v, Expect::Any).await.unwrap();
}

/// Records altered in place through the storage layer (so sled's checksums are valid and only
/// the barrier can tell): one key's material flipped by a bit, two keys' material records
/// swapped, one key's metadata flipped. The server still unseals and serves the intact keys
/// exactly; each damaged key fails with DATA_LOSS naming it; creation is refused while a key's
/// name is unknown (a name must never be reused); nothing damaged is erased.
/// [RègleVérificationUtilisabilité-1: a key's integrity is checked before use; SNC 10.5: a
///  protected key container whose tampering is detected, path binding included]
#[tokio::test]
async fn barrier_detects_altered_and_swapped_records_per_key() {
    let inst = Installation::new();
    let (share, acks) = populate(&inst, 6).await;
    let id = |i: usize| {
        let key = format!("corrupt/k{i}");
        key_id_of(&acks.iter().find(|a| a.key == key).unwrap().ciphertext)
    };
    let material = |i: usize| format!("keys/{}/v/{:010}", id(i), 1);
    {
        let b = SledBackend::open(&inst.data_dir()).unwrap();
        flip_record(&b, &material(0)).await;
        let m2 = b.get(&material(2)).await.unwrap().unwrap().value;
        let m4 = b.get(&material(4)).await.unwrap().unwrap().value;
        b.put(&material(2), m4, Expect::Any).await.unwrap();
        b.put(&material(4), m2, Expect::Any).await.unwrap();
        flip_record(&b, &format!("keys/{}/meta", id(1))).await;
    }
    let Start::Up(running) = start(&inst) else {
        panic!("refused to start");
    };
    let c = connect(&inst, &running).await;
    let st = bounded(c.unseal(&share)).await.unwrap();
    assert!(
        !st.sealed,
        "one damaged key must not make the whole KMS refuse to unseal"
    );

    for a in &acks {
        let r = c.decrypt(a.ciphertext.clone(), a.context.clone()).await;
        match a.key.as_str() {
            "corrupt/k0" | "corrupt/k2" | "corrupt/k4" => {
                let s = status_of(r.unwrap_err());
                assert_eq!(s.code(), Code::DataLoss, "{}: {s:?}", a.key);
                assert!(s.message().contains(&a.key), "{s:?}");
                assert!(s.message().contains("restore"), "{s:?}");
            }
            "corrupt/k1" => {
                // Its name is unreadable: the message names its id.
                let s = status_of(r.unwrap_err());
                assert_eq!(s.code(), Code::DataLoss, "{s:?}");
                assert!(s.message().contains(&id(1)), "{s:?}");
            }
            _ => assert_eq!(r.unwrap().plaintext, a.plaintext, "{}", a.key),
        }
    }
    // Encrypting under a damaged key's (latest) version fails clearly, naming it.
    let s = status_of(
        c.encrypt("corrupt/k0", b"x".to_vec(), ctx("corrupt/k0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::DataLoss, "{s:?}");
    assert!(s.message().contains("corrupt/k0"), "{s:?}");
    // The key whose metadata is damaged is not silently absent.
    let s = status_of(
        c.encrypt("corrupt/k1", b"x".to_vec(), ctx("corrupt/k1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("damaged"), "{s:?}");
    let req = pb::CreateKeyRequest {
        name: "corrupt/k1".into(),
        ..Default::default()
    };
    let s = status_of(c.call(c.key_admin().create_key(req)).await.unwrap_err());
    assert_eq!(s.code(), Code::DataLoss, "{s:?}");
    // Intact keys keep working for changes too.
    c.call(c.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "corrupt/k3".into(),
    }))
    .await
    .unwrap();
    let e = c
        .encrypt("corrupt/k5", b"after".to_vec(), ctx("corrupt/k5"))
        .await
        .unwrap();
    let d = c.decrypt(e.ciphertext, ctx("corrupt/k5")).await.unwrap();
    assert_eq!(d.plaintext, b"after");
    drop(c);
    drop(running);
    let log = std::fs::read_to_string(log_path(&inst)).unwrap();
    assert_no_panic(&log, "barrier");
    assert!(log.contains("key material record is damaged"), "{log}");
    assert!(log.contains("key metadata record is damaged"), "{log}");

    // Nothing damaged was erased: the records are all still there for a forensic copy, and
    // the damaged key's material in particular was not taken for an orphan.
    let b = SledBackend::open(&inst.data_dir()).unwrap();
    for path in [
        material(0),
        material(1),
        format!("keys/{}/v/{:010}", id(1), 2),
        material(2),
        material(4),
        format!("keys/{}/meta", id(1)),
    ] {
        assert!(b.get(&path).await.unwrap().is_some(), "{path} was erased");
    }
}

/// The seal's own records damaged through the storage layer: the installation marker altered
/// (unseal refused with DATA_LOSS saying to restore), the seal configuration altered (start
/// refused with a clear message) or deleted while key records remain (start refused: offering
/// init would let a new installation be written over the old one). No panic anywhere.
/// [SNC 10.5; RègleVérificationUtilisabilité-1]
#[tokio::test]
async fn damaged_seal_records_refuse_clearly() {
    let f = Fixture::new().await;

    f.restore();
    {
        let b = SledBackend::open(&f.inst.data_dir()).unwrap();
        flip_record(&b, "sys/installation").await;
    }
    match f.check("marker flipped").await {
        Outcome::UnsealRefused(m) => {
            assert!(m.starts_with("DataLoss"), "{m}");
            assert!(
                m.contains("sys/installation") && m.to_lowercase().contains("restore"),
                "{m}"
            );
        }
        other => panic!("marker flipped: {other:?}"),
    }

    f.restore();
    {
        let b = SledBackend::open(&f.inst.data_dir()).unwrap();
        let mut v = b.get("core/seal").await.unwrap().unwrap().value;
        v[0] = b'X';
        b.put("core/seal", v, Expect::Any).await.unwrap();
    }
    match f.check("seal configuration altered").await {
        Outcome::RefusedToStart(m) => {
            assert!(m.contains("core/seal") && m.contains("restore"), "{m}")
        }
        other => panic!("seal configuration altered: {other:?}"),
    }

    f.restore();
    {
        let b = SledBackend::open(&f.inst.data_dir()).unwrap();
        b.delete("core/seal", Expect::Any).await.unwrap();
    }
    match f.check("seal configuration deleted").await {
        Outcome::RefusedToStart(m) => {
            assert!(m.contains("core/seal") && m.contains("missing"), "{m}")
        }
        other => panic!("seal configuration deleted: {other:?}"),
    }
}

/// The snapshot file sled writes on a clean close: every byte flipped in turn, truncated,
/// deleted. Same guarantees as for the log. [RègleVérificationUtilisabilité-1; SNC 10.5]
#[tokio::test]
async fn damaged_snapshot_is_detected_never_a_wrong_plaintext() {
    let f = Fixture::with_snapshot().await;
    let files = data_files(&f.pristine);
    let snap = files
        .iter()
        .find(|n| n.starts_with("snap."))
        .unwrap_or_else(|| panic!("no snapshot in {files:?}"));
    let len = std::fs::metadata(f.pristine.join(snap)).unwrap().len() as usize;
    let path = f.inst.data_dir().join(snap);
    let mut results: BTreeMap<Outcome, Vec<String>> = BTreeMap::new();
    for off in 0..len {
        f.restore();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[off] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let case = format!("{snap}@{off}");
        let outcome = f.check(&case).await;
        results.entry(outcome).or_default().push(case);
    }
    for cut in [0, len / 2, len - 1] {
        f.restore();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let case = format!("{snap} cut to {cut} of {len}");
        let outcome = f.check(&case).await;
        results.entry(outcome).or_default().push(case);
    }
    f.restore();
    std::fs::remove_file(&path).unwrap();
    let case = format!("{snap} deleted");
    let outcome = f.check(&case).await;
    results.entry(outcome).or_default().push(case);
    summarize("snapshot damage", &results);
    // Undamaged, the same directory serves every ciphertext (the baseline the damage is
    // measured against).
    f.restore();
    assert_eq!(f.check("pristine").await, Outcome::Served);
}

/// An MFA enrolment record altered through the storage layer: the KMS still unseals; that
/// principal's second factor is refused saying the enrolment is damaged and to restore (not
/// "not enrolled"), and
/// it cannot enrol again over the damaged record. [SNC 9.6: the second factor is not silently
/// dropped or replaced; RègleVérificationUtilisabilité-1]
#[tokio::test]
async fn damaged_mfa_enrolment_fails_that_principal_only() {
    let inst = Installation::new();
    std::fs::write(inst.policies_dir().join("mfa.toml"), kms_tests::MFA_POLICY).unwrap();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let other = server.client_as(&inst.pki, "other").await;
    other
        .call(other.mfa().enroll(pb::EnrollMfaRequest {}))
        .await
        .unwrap();
    drop(other);
    server.kill();
    {
        let b = SledBackend::open(&inst.data_dir()).unwrap();
        let records = b.list("mfa/").await.unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        flip_record(&b, &records[0]).await;
    }
    let server = start_unsealed(&inst, &mut share).await;
    let other = server.client_as(&inst.pki, "other").await;
    let req = pb::CreateKeyRequest {
        name: "mfa/a".into(),
        ..Default::default()
    };
    let c = other.with_totp("123456").unwrap();
    let s = status_of(c.call(c.key_admin().create_key(req)).await.unwrap_err());
    // The policy check reports the refused second factor as a denial, with MFA's reason.
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("is damaged in storage") && s.message().contains("restore"),
        "{s:?}"
    );
    let again = other
        .call(other.mfa().enroll(pb::EnrollMfaRequest {}))
        .await;
    let s = status_of(again.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    // Other principals are served: the operator still creates keys.
    let c = server.client().await;
    let req = pb::CreateKeyRequest {
        name: "plain".into(),
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req)).await.unwrap();
    drop((c, other));
    server.kill();
    let log = std::fs::read_to_string(inst.root.path().join("server.log")).unwrap();
    assert_no_panic(&log, "mfa");
    assert!(log.contains("MFA enrolment record is damaged"), "{log}");
}

/// A key with one damaged version can still be changed: the damaged version stays unreadable
/// (DATA_LOSS) but does not block a revocation of another version, a rotation or a disable and
/// enable. (Before, every change re-read the damaged record and failed, so a compromised
/// version of such a key could not be revoked and its scheduled rotation never ran.)
#[tokio::test]
async fn a_damaged_version_does_not_block_changes_to_its_key() {
    let inst = Installation::new();
    let (share, acks) = populate(&inst, 2).await;
    let key = "corrupt/k1";
    let id = key_id_of(&acks.iter().find(|a| a.key == key).unwrap().ciphertext);
    {
        let b = SledBackend::open(&inst.data_dir()).unwrap();
        flip_record(&b, &format!("keys/{id}/v/{:010}", 1)).await;
    }
    let Start::Up(running) = start(&inst) else {
        panic!("refused to start");
    };
    let c = connect(&inst, &running).await;
    assert!(!bounded(c.unseal(&share)).await.unwrap().sealed);
    c.call(
        c.key_admin()
            .revoke_key_version(pb::RevokeKeyVersionRequest {
                name: key.into(),
                version: 2,
                reason: pb::RevocationReason::Compromised as i32,
            }),
    )
    .await
    .expect("revoking an intact version of a key with a damaged version");
    c.call(
        c.key_admin()
            .rotate_key(pb::RotateKeyRequest { name: key.into() }),
    )
    .await
    .expect("rotating a key with a damaged version");
    c.call(
        c.key_admin()
            .disable_key(pb::KeyNameRequest { name: key.into() }),
    )
    .await
    .unwrap();
    c.call(
        c.key_admin()
            .enable_key(pb::KeyNameRequest { name: key.into() }),
    )
    .await
    .expect("enabling a key with a damaged version");
    let e = c.encrypt(key, b"after".to_vec(), ctx(key)).await.unwrap();
    assert_eq!(
        c.decrypt(e.ciphertext, ctx(key)).await.unwrap().plaintext,
        b"after"
    );
    for a in acks.iter().filter(|a| a.key == key) {
        let s = status_of(
            c.decrypt(a.ciphertext.clone(), a.context.clone())
                .await
                .unwrap_err(),
        );
        // Version 1 is damaged, version 2 revoked: neither decrypts, neither silently.
        assert!(
            matches!(s.code(), Code::DataLoss | Code::FailedPrecondition),
            "{s:?}"
        );
    }
    drop(c);
    drop(running);
    assert_no_panic(
        &std::fs::read_to_string(log_path(&inst)).unwrap(),
        "version",
    );
}
