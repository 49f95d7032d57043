//! Crash safety: a mixed workload from several clients and `kms-bench`, a SIGKILL at a random
//! moment, a restart, and proof that nothing acknowledged was lost, no wrong plaintext is ever
//! returned and the audit chain still verifies. One installation is kept across all rounds, so
//! data written in round 1 is checked again in every later round.
//!
//! Rounds: 20 by default; `KMS_CRASH_ROUNDS=200 cargo test -p kms-tests --test crash` for a
//! long run. Each run prints its seed; `KMS_CRASH_SEED=<seed>` replays the same kill delays and
//! the same random draws of each client (what a client can do next also depends on how much
//! was acknowledged before each kill, a matter of timing, so a replay follows the failing run
//! closely, not exactly). See `docs/crash-testing.md`.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_tests::{FAST_LIFECYCLE, Installation, Server, bin, start_unsealed};
use tonic::Code;

/// Concurrent workload clients, each on its own connection.
const CLIENTS: usize = 3;
/// The key `kms-bench` encrypts under in the background.
const BENCH_KEY: &str = "crash/bench";
/// The SIGKILL comes this long after the workload starts: at least `KILL_MIN_MS`, plus up to
/// `KILL_SPAN_MS` drawn from the seeded generator.
const KILL_MIN_MS: u64 = 150;
const KILL_SPAN_MS: u64 = 1000;
/// Live (not deleted) keys a client keeps at most; past it, it deletes more than it creates.
const MAX_LIVE_KEYS: usize = 6;
/// Older ciphertexts re-checked after each restart, besides all of the last round's.
const SAMPLE: usize = 40;
/// Rotate the audit log at this size: about every round, so rotations are crashed into too.
const AUDIT_FILE_BYTES: u64 = 256 * 1024;
/// A bound for things that take milliseconds (a client noticing the dead server): only there
/// so that a hang fails with a message instead of blocking CI.
const GENEROUS: Duration = Duration::from_secs(60);

/// SplitMix64: a tiny seeded generator, so a round's kill delay and operations replay from
/// its printed seed. Not for cryptography: it only picks test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant for test inputs).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What the test knows a key to be, from acknowledged changes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Enabled,
    Disabled,
    /// Scheduled for deletion with a 0-day wait: pending, or already destroyed by the
    /// scheduler.
    Deleting,
    /// Seen destroyed: must stay so forever.
    Destroyed,
}

#[derive(Clone, Debug)]
struct KeyModel {
    name: String,
    /// The create was acknowledged (false only while a create is in flight at the kill).
    created: bool,
    latest: u32,
    state: State,
    revoked: BTreeSet<u32>,
}

/// An acknowledged encryption.
struct Ct {
    key: String,
    /// Index of the key in its client's `Owned::keys` (stable: only an unacknowledged create,
    /// always the last key, is ever removed).
    key_idx: usize,
    version: u32,
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
    context: HashMap<String, String>,
    round: u32,
}

/// A client's keys and ciphertexts. Only its owner changes a key, so the last acknowledged
/// state of each key is known exactly (plus, after a kill, the one change that was in flight).
#[derive(Default)]
struct Owned {
    keys: Vec<KeyModel>,
    cts: Vec<Ct>,
    /// Generation of the probe policy file (client 0 only); 0 = never written.
    policy_gen: u32,
    created: u32,
}

/// A change whose answer the kill swallowed: it may or may not have happened.
#[derive(Clone, Debug)]
enum Pending {
    Create(usize),
    Rotate(usize),
    Disable(usize),
    Enable(usize),
    Revoke(usize, u32),
    ScheduleDeletion(usize),
}

/// What one client did in one round.
struct Outcome {
    owned: Owned,
    pending: Option<Pending>,
    /// (audit operation, key) of every acknowledged call, to find in the audit log.
    acked: Vec<(String, Option<String>)>,
    /// The first thing that went wrong before the kill (the test fails with it).
    failure: Option<String>,
}

/// Whether an error is the kill's doing: the connection broke after the kill was decided.
/// A definitive answer from the server (any other status) is judged even then.
fn from_kill(e: &ClientError, killed: &AtomicBool) -> bool {
    killed.load(Ordering::SeqCst) && broken(e)
}

/// Whether an error is what a connection broken under a call gives (no answer from the KMS).
fn broken(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Status(s) => {
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            )
        }
        ClientError::Config(_) => false,
    }
}

fn code(e: &ClientError) -> Option<Code> {
    match e {
        ClientError::Status(s) => Some(s.code()),
        _ => None,
    }
}

/// Decrypts `ct` and checks the answer: the plaintext, exactly, if `usable`; otherwise
/// FAILED_PRECONDITION (README "Status codes": disabled, pending deletion, destroyed, revoked).
/// Never a wrong plaintext either way.
///
/// Returns: `Ok(true)` decrypted, `Ok(false)` refused as expected, `Err(None)` the kill cut
/// the call, `Err(Some(why))` anything else.
async fn check_ct(
    c: &Client,
    ct: &Ct,
    usable: bool,
    killed: &AtomicBool,
) -> Result<bool, Option<String>> {
    let what = format!(
        "ciphertext of round {} under {} v{}",
        ct.round, ct.key, ct.version
    );
    match c.decrypt(ct.ciphertext.clone(), ct.context.clone()).await {
        Ok(d) => {
            if d.plaintext != ct.plaintext {
                return Err(Some(format!("{what}: decrypted to a WRONG plaintext")));
            }
            if !usable {
                return Err(Some(format!(
                    "{what}: decrypted although its key or version is unusable"
                )));
            }
            if d.key != ct.key || d.version != ct.version {
                return Err(Some(format!(
                    "{what}: answered as {} v{}",
                    d.key, d.version
                )));
            }
            Ok(true)
        }
        Err(e) if from_kill(&e, killed) => Err(None),
        Err(e) if !usable && code(&e) == Some(Code::FailedPrecondition) => Ok(false),
        Err(e) => Err(Some(format!(
            "{what}: {e} (expected {})",
            if usable {
                "its plaintext"
            } else {
                "FAILED_PRECONDITION"
            }
        ))),
    }
}

fn usable(k: &KeyModel, version: u32) -> bool {
    k.state == State::Enabled && !k.revoked.contains(&version)
}

/// The probe policy of generation `g`: `other` may read only `crash/probe-<g>`. Written to a
/// temporary name and renamed, so the server never reads half a file.
fn write_probe_policy(dir: &Path, g: u32) {
    let text = format!(
        "[[rule]]\nid = \"crash-probe-{g}\"\neffect = \"allow\"\n\
         principals = [\"spiffe://kms.test/other\"]\noperations = [\"read\"]\n\
         keys = [\"crash/probe-{g}\"]\n"
    );
    let tmp = dir.join("crash-probe.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("crash-probe.toml")).unwrap();
}

/// What a probe read by `other` of `crash/probe-<g>` answers: NOT_FOUND when the policy of
/// generation `g` is in force (allowed, but no such key), PERMISSION_DENIED otherwise.
async fn probe(other: &Client, g: u32) -> Result<Code, ClientError> {
    let req = pb::GetKeyRequest {
        name: format!("crash/probe-{g}"),
    };
    match other.call(other.key_admin().get_key(req)).await {
        Ok(_) => Ok(Code::Ok),
        Err(e) if broken(&e) => Err(e),
        Err(e) => Ok(code(&e).unwrap()),
    }
}

/// One client's share of a round: random operations on its own keys until the kill.
#[allow(clippy::too_many_arguments)]
async fn client_round(
    idx: usize,
    round: u32,
    c: Client,
    other: Client,
    mut owned: Owned,
    mut rng: Rng,
    killed: Arc<AtomicBool>,
    policies: PathBuf,
) -> Outcome {
    let mut acked: Vec<(String, Option<String>)> = Vec::new();
    let out = |owned, acked, pending, failure| Outcome {
        owned,
        pending,
        acked,
        failure,
    };
    loop {
        let live: Vec<usize> = (0..owned.keys.len())
            .filter(|&i| matches!(owned.keys[i].state, State::Enabled | State::Disabled))
            .collect();
        let enabled: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| owned.keys[i].state == State::Enabled)
            .collect();
        let roll = rng.below(100);
        // Weights: encrypt 35, re-check 20, rotate 10, revoke 8, disable/enable 10,
        // schedule deletion 5, create 7, policy reload 5 (client 0).
        let op = if enabled.is_empty() || (roll < 7 && live.len() < MAX_LIVE_KEYS) {
            "create"
        } else if roll < 42 {
            "encrypt"
        } else if roll < 62 {
            "recheck"
        } else if roll < 72 {
            "rotate"
        } else if roll < 80 {
            "revoke"
        } else if roll < 90 {
            "toggle"
        } else if roll < 95 || idx != 0 {
            if live.len() > 2 { "delete" } else { "encrypt" }
        } else {
            "reload"
        };
        macro_rules! fail_or_stop {
            ($e:expr, $pending:expr, $what:expr) => {{
                let e = $e;
                let failure = (!from_kill(&e, &killed))
                    .then(|| format!("round {round} client {idx}: {} failed: {e}", $what));
                return out(owned, acked, $pending, failure);
            }};
        }
        match op {
            "create" => {
                owned.created += 1;
                let name = format!("crash/c{idx}/k{}", owned.created);
                owned.keys.push(KeyModel {
                    name: name.clone(),
                    created: false,
                    latest: 1,
                    state: State::Enabled,
                    revoked: BTreeSet::new(),
                });
                let i = owned.keys.len() - 1;
                let req = pb::CreateKeyRequest {
                    name: name.clone(),
                    purpose: pb::KeyPurpose::EncryptDecrypt as i32,
                    ..Default::default()
                };
                match c.call(c.key_admin().create_key(req)).await {
                    Ok(_) => {
                        owned.keys[i].created = true;
                        acked.push(("create-key".into(), Some(name)));
                    }
                    Err(e) => fail_or_stop!(e, Some(Pending::Create(i)), format!("create {name}")),
                }
            }
            "encrypt" => {
                let i = *rng.pick(&enabled).unwrap();
                let key = owned.keys[i].name.clone();
                let len = 1 + rng.below(200) as usize;
                let plaintext = rng.bytes(len);
                let context = HashMap::from([
                    ("client".to_string(), idx.to_string()),
                    ("n".to_string(), rng.next().to_string()),
                ]);
                match c.encrypt(&key, plaintext.clone(), context.clone()).await {
                    Ok(r) => {
                        if r.version != owned.keys[i].latest {
                            let failure = format!(
                                "round {round} client {idx}: encrypt under {key} used v{}, \
                                 the latest is v{}",
                                r.version, owned.keys[i].latest
                            );
                            return out(owned, acked, None, Some(failure));
                        }
                        owned.cts.push(Ct {
                            key: key.clone(),
                            key_idx: i,
                            version: r.version,
                            ciphertext: r.ciphertext,
                            plaintext,
                            context,
                            round,
                        });
                        acked.push(("encrypt".into(), Some(key)));
                    }
                    Err(e) => fail_or_stop!(e, None, format!("encrypt under {key}")),
                }
            }
            "recheck" => {
                // An older acknowledged ciphertext of this client, any round; keys being
                // deleted are left to the check after the restart.
                let picks: Vec<usize> = (0..8)
                    .map(|_| rng.below(owned.cts.len().max(1) as u64) as usize)
                    .collect();
                let Some(&j) = picks.iter().find(|&&j| {
                    owned
                        .cts
                        .get(j)
                        .is_some_and(|ct| owned.keys[ct.key_idx].state != State::Deleting)
                }) else {
                    continue;
                };
                let ct = &owned.cts[j];
                let k = &owned.keys[ct.key_idx];
                match check_ct(&c, ct, usable(k, ct.version), &killed).await {
                    Ok(true) => acked.push(("decrypt".into(), Some(ct.key.clone()))),
                    Ok(false) => {}
                    Err(None) => return out(owned, acked, None, None),
                    Err(Some(why)) => {
                        let failure = format!("round {round} client {idx}: re-check: {why}");
                        return out(owned, acked, None, Some(failure));
                    }
                }
            }
            "rotate" => {
                let i = *rng.pick(&enabled).unwrap();
                let name = owned.keys[i].name.clone();
                let req = pb::RotateKeyRequest { name: name.clone() };
                match c.call(c.key_admin().rotate_key(req)).await {
                    Ok(k) => {
                        if k.latest_version != owned.keys[i].latest + 1 {
                            let failure = format!(
                                "round {round} client {idx}: rotate {name} gave v{} after v{}",
                                k.latest_version, owned.keys[i].latest
                            );
                            return out(owned, acked, None, Some(failure));
                        }
                        owned.keys[i].latest = k.latest_version;
                        acked.push(("rotate-key".into(), Some(name)));
                    }
                    Err(e) => fail_or_stop!(e, Some(Pending::Rotate(i)), format!("rotate {name}")),
                }
            }
            "revoke" => {
                // Never the latest version, so the key keeps encrypting.
                let choices: Vec<(usize, u32)> = live
                    .iter()
                    .flat_map(|&i| {
                        let k = &owned.keys[i];
                        (1..k.latest)
                            .filter(|v| !k.revoked.contains(v))
                            .map(move |v| (i, v))
                    })
                    .collect();
                let Some(&(i, v)) = rng.pick(&choices) else {
                    continue;
                };
                let name = owned.keys[i].name.clone();
                let req = pb::RevokeKeyVersionRequest {
                    name: name.clone(),
                    version: v,
                    reason: pb::RevocationReason::Superseded as i32,
                };
                match c.call(c.key_admin().revoke_key_version(req)).await {
                    Ok(_) => {
                        owned.keys[i].revoked.insert(v);
                        acked.push(("revoke-key-version".into(), Some(name)));
                    }
                    Err(e) => {
                        fail_or_stop!(
                            e,
                            Some(Pending::Revoke(i, v)),
                            format!("revoke {name} v{v}")
                        )
                    }
                }
            }
            "toggle" => {
                let i = *rng.pick(&live).unwrap();
                let name = owned.keys[i].name.clone();
                let req = pb::KeyNameRequest { name: name.clone() };
                let enabling = owned.keys[i].state == State::Disabled;
                let (r, pending, op) = if enabling {
                    (
                        c.call(c.key_admin().enable_key(req)).await,
                        Pending::Enable(i),
                        "enable-key",
                    )
                } else {
                    (
                        c.call(c.key_admin().disable_key(req)).await,
                        Pending::Disable(i),
                        "disable-key",
                    )
                };
                match r {
                    Ok(_) => {
                        owned.keys[i].state = if enabling {
                            State::Enabled
                        } else {
                            State::Disabled
                        };
                        acked.push((op.into(), Some(name)));
                    }
                    Err(e) => fail_or_stop!(e, Some(pending), format!("{op} {name}")),
                }
            }
            "delete" => {
                let i = *rng.pick(&live).unwrap();
                let name = owned.keys[i].name.clone();
                let req = pb::ScheduleKeyDeletionRequest {
                    name: name.clone(),
                    waiting_period_days: Some(0),
                };
                match c.call(c.key_admin().schedule_key_deletion(req)).await {
                    Ok(_) => {
                        owned.keys[i].state = State::Deleting;
                        acked.push(("schedule-key-deletion".into(), Some(name)));
                    }
                    Err(e) => fail_or_stop!(
                        e,
                        Some(Pending::ScheduleDeletion(i)),
                        format!("schedule deletion of {name}")
                    ),
                }
            }
            "reload" => {
                // The file is on disk whatever happens to the call: a restart reads it.
                owned.policy_gen += 1;
                let g = owned.policy_gen;
                write_probe_policy(&policies, g);
                match c
                    .call(c.policy().reload(pb::ReloadPoliciesRequest {}))
                    .await
                {
                    Ok(_) => acked.push(("reload".into(), None)),
                    Err(e) => fail_or_stop!(e, None, format!("policy reload (generation {g})")),
                }
                // Acknowledged: the new rule is in force, the previous one is not.
                let now = probe(&other, g).await;
                let before = if g > 1 {
                    probe(&other, g - 1).await
                } else {
                    Ok(Code::PermissionDenied)
                };
                match (now, before) {
                    (Ok(Code::NotFound), Ok(Code::PermissionDenied)) => {}
                    (Err(e), _) | (_, Err(e)) => fail_or_stop!(e, None, "probe after reload"),
                    (now, before) => {
                        let failure = format!(
                            "round {round}: after reload {g}, probe {g} gave {now:?} (want \
                             NOT_FOUND), probe {} gave {before:?} (want PERMISSION_DENIED)",
                            g - 1
                        );
                        return out(owned, acked, None, Some(failure));
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}

/// `kms-bench run` encrypting under [`BENCH_KEY`] in the background; killed on drop (its
/// report is not wanted: the server dies under it).
struct Bench(Child);

impl Bench {
    /// Started like `Server::bench` (the test client's certificate, in the environment), but
    /// spawned, not waited for.
    fn start(server: &Server, inst: &Installation) -> Bench {
        let client = inst.pki.client("client");
        let child = Command::new(bin("kms-bench"))
            .args(["run", "--op", "encrypt", "--key", BENCH_KEY])
            .args(["--rate", "200", "--concurrency", "4", "--duration", "600"])
            .args(["--warmup", "0", "--json"])
            .env("KMS_ADDR", &server.addr)
            .env("KMS_CA_CERT", inst.pki.ca())
            .env("KMS_CLIENT_CERT", &client.cert)
            .env("KMS_CLIENT_KEY", &client.key)
            .env("KMS_TLS_SERVER_NAME", "localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Bench(child)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (polling, at most [`GENEROUS`]) until the audit log, past `offset`, records an
/// encryption of `kms-bench`'s.
async fn wait_for_bench(inst: &Installation, offset: u64) {
    let path = inst.root.path().join("audit.log");
    let needle = format!("\"operation\":\"encrypt\",\"key\":\"{BENCH_KEY}\"");
    let deadline = Instant::now() + GENEROUS;
    loop {
        let log = std::fs::read(&path).unwrap();
        // A rotation since `offset` started a new file: search all of it. `offset` may fall
        // inside a line cut by the last restart: a lossy view is enough.
        let new = String::from_utf8_lossy(log.get(offset as usize..).unwrap_or(&log));
        if new.contains(&needle) {
            return;
        }
        assert!(Instant::now() < deadline, "kms-bench never encrypted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every file of the audit log, oldest first: rotated `audit.log.<last seq>`, then `audit.log`.
fn audit_files(inst: &Installation) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(inst.root.path())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?.strip_prefix("audit.log.")?.parse();
            Some((n.ok()?, p))
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(inst.root.path().join("audit.log"));
    files
}

/// What `kms-cli audit verify` found in the log left by the kill.
struct AuditCheck {
    head_seq: u64,
    torn: bool,
    files: usize,
}

/// Runs `kms-cli audit verify` on the whole log, as the kill left it (before the restart, which
/// cuts a torn last line): it must verify; a torn last line must be reported as an
/// unacknowledged request. Then every call acknowledged in this round must have a complete
/// `ok` record written after `since` (the head of the previous check): so a torn line, if any,
/// is none of theirs. [SNC 12.6–12.8: log integrity]
fn check_audit(inst: &Installation, since: u64, acked: &[(String, Option<String>)]) -> AuditCheck {
    let files = audit_files(inst);
    let out = Command::new(bin("kms-cli"))
        .args(["--format", "json", "audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify failed after a kill ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let torn = report["torn_last_line"].as_bool().unwrap();
    let head_seq = report["head"]["seq"].as_u64().unwrap();

    let mut text = Vec::new();
    for f in &files {
        text.extend(std::fs::read(f).unwrap());
    }
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // The verifier and the bytes agree on whether the tail is torn.
    assert_eq!(torn, complete < text.len(), "torn_last_line vs the file");
    if torn {
        let human = Command::new(bin("kms-cli"))
            .args(["audit", "verify"])
            .args(&files)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&human.stdout);
        assert!(human.status.success(), "{stdout}");
        assert!(
            stdout.contains("last line torn (an unacknowledged request)"),
            "{stdout}"
        );
        let tail = String::from_utf8_lossy(&text[complete..]);
        println!("  torn last line ({} bytes): {tail}", text.len() - complete);
    }

    let mut logged: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut records = 0u64;
    for line in text[..complete].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let r: serde_json::Value = serde_json::from_slice(line).unwrap();
        records += 1;
        if r["seq"].as_u64().unwrap() <= since || r["outcome"] != "ok" {
            continue;
        }
        let key = r["key"].as_str().map(str::to_string);
        *logged
            .entry((r["operation"].as_str().unwrap().to_string(), key))
            .or_default() += 1;
    }
    assert_eq!(records, head_seq, "one record per seq, from 1");
    let mut wanted: HashMap<&(String, Option<String>), u64> = HashMap::new();
    for a in acked {
        *wanted.entry(a).or_default() += 1;
    }
    for (what, n) in wanted {
        let have = logged.get(what).copied().unwrap_or(0);
        assert!(
            have >= n,
            "{n} acknowledged {what:?} but only {have} complete ok records after seq {since}"
        );
    }
    AuditCheck {
        head_seq,
        torn,
        files: files.len(),
    }
}

/// All keys under `crash/`, by name.
async fn list_keys(c: &Client) -> BTreeMap<String, pb::Key> {
    let mut keys = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListKeysRequest {
            prefix: "crash/".into(),
            page_size: 1000,
            page_token,
        };
        let r = c.call(c.key_admin().list_keys(req)).await.unwrap();
        for k in r.keys {
            keys.insert(k.name.clone(), k);
        }
        if r.next_page_token.is_empty() {
            return keys;
        }
        page_token = r.next_page_token;
    }
}

fn observed_state(k: &pb::Key) -> State {
    match k.state() {
        pb::KeyState::Enabled => State::Enabled,
        pb::KeyState::Disabled => State::Disabled,
        pb::KeyState::PendingDeletion => State::Deleting,
        pb::KeyState::Destroyed => State::Destroyed,
        s => panic!("key {} in state {s:?}", k.name),
    }
}

/// After a restart: every acknowledged change of every client is there, a change in flight at
/// the kill is either there or not, and nothing else changed. Then the models take what the
/// server shows (settling the in-flight changes). [no loss of acknowledged data; SNC 11.9.a:
/// a destruction is irreversible]
fn check_keys(
    round: u32,
    owned: &mut [Owned],
    pending: &[Option<Pending>],
    seen: &BTreeMap<String, pb::Key>,
) {
    for (o, p) in owned.iter_mut().zip(pending) {
        let mut gone = None;
        for (i, m) in o.keys.iter_mut().enumerate() {
            let mine = |q: &Pending| match q {
                Pending::Create(j)
                | Pending::Rotate(j)
                | Pending::Disable(j)
                | Pending::Enable(j)
                | Pending::Revoke(j, _)
                | Pending::ScheduleDeletion(j) => *j == i,
            };
            let p = p.as_ref().filter(|q| mine(q));
            let ctx = format!("round {round}: key {} ({m:?}, in flight {p:?})", m.name);
            let Some(k) = seen.get(&m.name) else {
                assert!(!m.created, "{ctx}: acknowledged key missing after restart");
                gone = Some(i);
                continue;
            };
            let state = observed_state(k);
            let latest = k.latest_version;
            let revoked: BTreeSet<u32> = k
                .versions
                .iter()
                .filter(|v| v.state() == pb::VersionState::Revoked)
                .map(|v| v.version)
                .collect();
            if !m.created {
                assert!(
                    latest == 1 && state == State::Enabled && revoked.is_empty(),
                    "{ctx}: a key whose create was in flight shows {k:?}"
                );
            } else {
                let rotating = u32::from(matches!(p, Some(Pending::Rotate(_))));
                assert!(
                    (m.latest..=m.latest + rotating).contains(&latest),
                    "{ctx}: latest version {latest}"
                );
                let mut allowed = vec![match m.state {
                    State::Deleting => State::Destroyed,
                    s => s,
                }];
                match p {
                    Some(Pending::Disable(_)) => allowed.push(State::Disabled),
                    Some(Pending::Enable(_)) => allowed.push(State::Enabled),
                    Some(Pending::ScheduleDeletion(_)) => {
                        allowed.extend([State::Deleting, State::Destroyed])
                    }
                    _ => {}
                }
                if m.state == State::Deleting {
                    allowed.push(State::Deleting);
                }
                assert!(allowed.contains(&state), "{ctx}: state {state:?}");
                if state == State::Destroyed {
                    // A revoked version stays revoked through destruction (its material is
                    // erased all the same): revocation is final.
                    assert!(
                        k.versions.iter().all(|v| matches!(
                            v.state(),
                            pb::VersionState::Destroyed | pb::VersionState::Revoked
                        )),
                        "{ctx}: destroyed key with a live version: {k:?}"
                    );
                } else {
                    let maybe = match p {
                        Some(Pending::Revoke(_, v)) => Some(*v),
                        _ => None,
                    };
                    let extra: Vec<&u32> = revoked
                        .difference(&m.revoked)
                        .filter(|&&v| Some(v) != maybe)
                        .collect();
                    assert!(
                        m.revoked.is_subset(&revoked) && extra.is_empty(),
                        "{ctx}: revoked versions {revoked:?}"
                    );
                }
            }
            m.created = true;
            m.latest = latest;
            m.state = state;
            if state != State::Destroyed {
                m.revoked = revoked;
            }
        }
        // Only an in-flight create can be missing, and it is the last key.
        if let Some(i) = gone {
            o.keys.remove(i);
        }
    }
}

/// Decrypts every ciphertext of `round` and a random sample of [`SAMPLE`] older ones (always
/// with client 0's oldest, from round 1 as soon as it encrypted there), or all of them when
/// `round` is `None`. Returns how many were checked.
async fn check_cts(
    c: &Client,
    owned: &[Owned],
    round: Option<u32>,
    rng: &mut Rng,
    killed: &AtomicBool,
) -> usize {
    let all: Vec<(&Ct, &KeyModel)> = owned
        .iter()
        .flat_map(|o| o.cts.iter().map(move |ct| (ct, &o.keys[ct.key_idx])))
        .collect();
    let mut chosen: Vec<usize> = match round {
        None => (0..all.len()).collect(),
        Some(r) => {
            let older: Vec<usize> = (0..all.len()).filter(|&i| all[i].0.round < r).collect();
            let mut v: Vec<usize> = (0..all.len()).filter(|&i| all[i].0.round == r).collect();
            v.extend((0..SAMPLE.min(older.len())).map(|_| *rng.pick(&older).unwrap()));
            v.extend(older.first());
            v
        }
    };
    chosen.sort_unstable();
    chosen.dedup();
    for &i in &chosen {
        let (ct, k) = all[i];
        // Deleting keys may have been destroyed since the listing: unusable either way.
        if let Err(why) = check_ct(c, ct, usable(k, ct.version), killed).await {
            panic!("after the restart: {}", why.unwrap_or_default());
        }
    }
    chosen.len()
}

/// After a restart: the probe policy file last written is the one in force.
async fn check_policy(other: &Client, g: u32) {
    if g >= 1 {
        assert_eq!(probe(other, g).await.unwrap(), Code::NotFound, "policy {g}");
    }
    if g >= 2 {
        assert_eq!(
            probe(other, g - 1).await.unwrap(),
            Code::PermissionDenied,
            "policy {} still in force",
            g - 1
        );
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

/// For each round, on one installation kept across rounds: start and unseal the real server;
/// three clients create keys, rotate, encrypt (recording each acknowledged ciphertext), re-check
/// older ciphertexts, revoke versions, disable/enable, schedule deletions and reload the
/// policies, while `kms-bench` encrypts in the background; SIGKILL at a random moment; check
/// the audit chain as the kill left it; restart and check that every acknowledged change is
/// there, every acknowledged ciphertext decrypts to its plaintext unless its key or version was
/// deliberately made unusable (then FAILED_PRECONDITION, never wrong data), and the last policy
/// file written is in force.
///
/// 20 rounds by default; `KMS_CRASH_ROUNDS=200 cargo test -p kms-tests --test crash` for a long
/// run; `KMS_CRASH_SEED=<printed seed>` to replay a failing one (docs/crash-testing.md).
///
/// Proves: no loss of acknowledged data (DESIGN §6: every state change is durable before it
/// is acknowledged); [SNC 12.6–12.8] protect the logs' integrity (the chain verifies after every
/// crash, and every acknowledged call is logged); [SNC 11.9.a, 19.4.a] destruction is
/// irreversible (a destroyed key stays destroyed across crashes, its data undecryptable);
/// [RègleVérificationUtilisabilité-1] disabled keys, revoked versions and keys pending deletion
/// are refused before use, after any crash too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill() {
    let rounds = env_u64("KMS_CRASH_ROUNDS").unwrap_or(20) as u32;
    let seed = env_u64("KMS_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("crash test: {rounds} rounds, seed {seed} (replay: KMS_CRASH_SEED={seed})");
    let started = Instant::now();
    // Each round draws from its own generator, so its kill delay and the clients' seeds do not
    // depend on how much earlier rounds got done before their kills.
    let round_rng = |round: u32| {
        let mut r = Rng(seed ^ u64::from(round).wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next();
        r
    };
    // Small audit files, so rotations happen under load and are crashed into too.
    let inst = Installation::with_config(&format!(
        "{FAST_LIFECYCLE}[audit]\nmax_bytes = {AUDIT_FILE_BYTES}\n"
    ));
    let mut share = None;
    let mut owned: Vec<Owned> = (0..CLIENTS).map(|_| Owned::default()).collect();
    let mut pending: Vec<Option<Pending>> = vec![None; CLIENTS];
    let mut audit_seq = 0;
    let mut torn_rounds = 0;
    for round in 1..=rounds + 1 {
        let server = start_unsealed(&inst, &mut share).await;
        let c = server.client().await;
        let other = server.client_as(&inst.pki, "other").await;
        let killed = Arc::new(AtomicBool::new(false));
        if round > 1 {
            let seen = list_keys(&c).await;
            check_keys(round - 1, &mut owned, &pending, &seen);
            let mut sample = round_rng(round + 1_000_000);
            let checked = check_cts(&c, &owned, Some(round - 1), &mut sample, &killed).await;
            check_policy(&other, owned[0].policy_gen).await;
            println!(
                "  after restart: {} keys, {checked} ciphertexts decrypted as expected",
                seen.len()
            );
        }
        if round > rounds {
            let checked = check_cts(&c, &owned, None, &mut round_rng(0), &killed).await;
            println!("final: all {checked} acknowledged ciphertexts checked");
            let bench = list_keys(&c).await;
            assert!(bench.contains_key(BENCH_KEY), "kms-bench never ran");
            assert!(server.terminate(), "no clean exit on SIGTERM");
            break;
        }

        let mut rng = round_rng(round);
        let delay = KILL_MIN_MS + rng.below(KILL_SPAN_MS);
        let log_len = std::fs::metadata(inst.root.path().join("audit.log"))
            .unwrap()
            .len();
        let bench = Bench::start(&server, &inst);
        // The kill timer starts once the load generator is encrypting, so it is under load.
        wait_for_bench(&inst, log_len).await;
        let mut tasks = Vec::new();
        for (idx, o) in owned.drain(..).enumerate() {
            let c = server.client().await;
            let task_rng = Rng(rng.next());
            tasks.push(tokio::spawn(client_round(
                idx,
                round,
                c,
                other.clone(),
                o,
                task_rng,
                killed.clone(),
                inst.policies_dir(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Decided before the signal, so every error the kill causes is seen as such.
        killed.store(true, Ordering::SeqCst);
        server.kill();
        drop(bench);

        let mut acked = Vec::new();
        let mut failures = Vec::new();
        for (idx, t) in tasks.into_iter().enumerate() {
            let r = tokio::time::timeout(GENEROUS, t)
                .await
                .unwrap_or_else(|_| panic!("client {idx} still running after the kill"))
                .unwrap();
            owned.push(r.owned);
            pending[idx] = r.pending;
            acked.extend(r.acked);
            failures.extend(r.failure);
        }
        assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
        let audit = check_audit(&inst, audit_seq, &acked);
        audit_seq = audit.head_seq;
        torn_rounds += u32::from(audit.torn);
        println!(
            "round {round}: killed after {delay} ms; {} calls acknowledged; audit ({} files) \
             verifies to seq {}{}",
            acked.len(),
            audit.files,
            audit.head_seq,
            if audit.torn { ", torn last line" } else { "" }
        );
    }
    println!(
        "crash test: {rounds} rounds in {:.1} s, {torn_rounds} with a torn audit line",
        started.elapsed().as_secs_f64()
    );
}

/// Creates an encrypt-decrypt key, which must succeed.
async fn create_key(c: &kms_client::Client, name: &str) {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        purpose: pb::KeyPurpose::EncryptDecrypt as i32,
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req)).await.unwrap();
}

/// A record write cut short by a crash, as a power loss can leave it (SIGKILL almost never
/// tears a write, so the loop above rarely sees one): after a SIGKILL, the log ends with the
/// first half of a next record, without its newline. `kms-cli audit verify` succeeds and
/// reports it as an unacknowledged request; every acknowledged call still has its complete
/// record; the restarted server cuts the torn line and continues the chain, which then
/// verifies whole, and the acknowledged data is intact. [SNC 12.6–12.8: protect the logs'
/// integrity; no loss of acknowledged data]
#[tokio::test]
async fn a_torn_audit_line_is_reported_then_cut() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create_key(&c, "crash/torn").await;
    let secret = b"acknowledged before the crash".to_vec();
    let ct = c
        .encrypt("crash/torn", secret.clone(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    server.kill();

    let path = inst.root.path().join("audit.log");
    let log = std::fs::read_to_string(&path).unwrap();
    let last = log.lines().last().unwrap();
    let seq = serde_json::from_str::<serde_json::Value>(last).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let next = last.replacen(
        &format!("{{\"seq\":{seq},"),
        &format!("{{\"seq\":{},", seq + 1),
        1,
    );
    let torn = &next[..next.len() / 2];
    std::fs::write(&path, format!("{log}{torn}")).unwrap();
    let acked = [
        ("create-key".to_string(), Some("crash/torn".to_string())),
        ("encrypt".to_string(), Some("crash/torn".to_string())),
    ];
    let check = check_audit(&inst, 0, &acked);
    assert!(check.torn, "the torn line was not reported");
    assert_eq!(check.head_seq, seq);

    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let d = c.decrypt(ct, HashMap::new()).await.unwrap();
    assert_eq!(d.plaintext, secret);
    server.kill();
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(!log.contains(torn), "the torn line is still in the log");
    let check = check_audit(&inst, seq, &[("decrypt".into(), Some("crash/torn".into()))]);
    assert!(!check.torn);
    assert!(check.head_seq > seq + 1, "no record after the restart");
}

/// The same, with the write cut inside a multi-byte character: records hold encryption-context
/// keys in clear, which may be any non-control text (here `clé`), so a torn line can end
/// mid-character. Verify reports it as torn; the server must still start, cut it and continue
/// the chain. [SNC 12.6–12.8: protect the logs' integrity]
#[tokio::test]
async fn a_torn_line_cut_inside_a_character_is_cut_too() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create_key(&c, "crash/utf8").await;
    let context = HashMap::from([("clé".to_string(), "v".to_string())]);
    let ct = c
        .encrypt("crash/utf8", b"x".to_vec(), context.clone())
        .await
        .unwrap()
        .ciphertext;
    server.kill();

    let path = inst.root.path().join("audit.log");
    let mut log = std::fs::read(&path).unwrap();
    let text = String::from_utf8(log.clone()).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains("\"clé\""), "{last}");
    let seq = serde_json::from_str::<serde_json::Value>(last).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let next = last.replacen(
        &format!("{{\"seq\":{seq},"),
        &format!("{{\"seq\":{},", seq + 1),
        1,
    );
    // Up to and including the first byte of 'é' (two bytes in UTF-8).
    let cut = next.find('é').unwrap() + 1;
    log.extend_from_slice(&next.as_bytes()[..cut]);
    std::fs::write(&path, &log).unwrap();
    let acked = [("encrypt".to_string(), Some("crash/utf8".to_string()))];
    let check = check_audit(&inst, 0, &acked);
    assert!(check.torn, "the torn line was not reported");
    assert_eq!(check.head_seq, seq);

    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    assert_eq!(c.decrypt(ct, context).await.unwrap().plaintext, b"x");
    server.kill();
    let check = check_audit(&inst, seq, &[("decrypt".into(), Some("crash/utf8".into()))]);
    assert!(!check.torn);
    assert!(check.head_seq > seq + 1, "no record after the restart");
}
