//! Review of the several-nodes change (Part E): each test here shows one defect found in the
//! review, and fails until it is fixed. The nodes are in-process (`Seal` + `Keystore` on their
//! own `PostgresBackend`, no follow loop), so each test drives the exact interleaving it is
//! about instead of waiting for a timing window to open.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kms_core::ciphertext::EncryptionContext;
use kms_core::key::{Purpose, RevocationReason, VersionState};
use kms_core::keyname::KeyName;
use kms_server::keystore::{KeySettings, Keystore};
use kms_server::storage::{Backend, PostgresBackend, PostgresConfig};
use kms_server::{KmsError, Seal};
use kms_tests::pg::PgServer;

/// Hang guard: a call that does not answer within this fails the test.
const HANG: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG:?}"))
}

async fn backend(url: &str) -> Arc<PostgresBackend> {
    let cfg: PostgresConfig =
        toml::from_str(&format!("url = \"{url}\"\ntls = \"disable\"")).unwrap();
    Arc::new(
        guard("connect", PostgresBackend::connect(&cfg))
            .await
            .unwrap(),
    )
}

/// One in-process node: its own connections, seal and key cache (and no follow loop: the test
/// calls `catch_up` itself where a node would have).
struct Node {
    seal: Arc<Seal>,
    keys: Keystore,
}

impl Node {
    /// A node on `url`, unsealed with `share` and its keys loaded.
    async fn unsealed(url: &str, share: &str) -> Node {
        let backend: Arc<dyn Backend> = backend(url).await;
        let seal = Arc::new(Seal::load(backend).await.unwrap());
        let s = seal.unseal(share).await.unwrap();
        assert!(!s.sealed);
        let keys = Keystore::new(seal.clone(), KeySettings::default())
            .with_max_staleness(Duration::from_secs(60));
        keys.load().await.unwrap();
        Node { seal, keys }
    }
}

/// A new installation (1 share, threshold 1) on `url`; returns its share.
async fn init(url: &str) -> String {
    let backend: Arc<dyn Backend> = backend(url).await;
    let seal = Seal::load(backend).await.unwrap();
    let shares = seal.init(1, 1).await.unwrap();
    shares.shares[0].to_string()
}

fn name(s: &str) -> KeyName {
    s.parse().unwrap()
}

async fn create(n: &Node, key: &str) {
    n.keys
        .create(
            name(key),
            Purpose::EncryptDecrypt,
            String::new(),
            BTreeMap::new(),
            None,
            false,
        )
        .await
        .unwrap();
}

/// Defect 1 (keystore.rs `refresh`, damaged branch): node B's keyring is one barrier term
/// behind (node A rotated the barrier key moments ago, B has not followed yet). A revokes
/// version 1 as compromised; the record is sealed under the new term. An administrator then
/// changes the key's description on B: B's refresh cannot open the newer record, installs the
/// OLD metadata under the NEW record version, and the change is written from that old
/// metadata with a compare-and-set that passes, so the revocation is silently undone for the
/// whole cluster. A change must be made from the latest committed record or not at all.
/// [RègleVérificationUtilisabilité-1: a revoked version is never usable again, on any node]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_keyring_is_behind_never_writes_a_key_from_an_older_record() {
    let pg = PgServer::start();
    let url = pg.url();
    let share = init(&url).await;
    let a = Node::unsealed(&url, &share).await;
    create(&a, "orders").await;
    a.keys.rotate(&name("orders")).await.unwrap();
    let b = Node::unsealed(&url, &share).await;
    assert_eq!(b.keys.get(&name("orders")).unwrap().latest(), 2);

    a.seal.rotate_barrier().await.unwrap();
    a.keys
        .revoke(&name("orders"), 1, RevocationReason::Compromised)
        .await
        .unwrap();

    // B has not followed the barrier rotation yet (its follow loop would within the bound).
    let r = b
        .keys
        .update_config(
            &name("orders"),
            None,
            None,
            Some("changed on B".into()),
            None,
        )
        .await;
    eprintln!(
        "update on B: {:?}",
        r.as_ref().map(|m| m.description.clone())
    );

    // What the cluster now holds, as a freshly unsealed node reads it.
    let c = Node::unsealed(&url, &share).await;
    let meta = c.keys.get(&name("orders")).unwrap();
    assert!(
        matches!(meta.version(1).unwrap().state, VersionState::Revoked { .. }),
        "version 1 was revoked as compromised on A, and a change on B un-revoked it: {:?}",
        meta.version(1).unwrap().state
    );
}

/// Defect 1, second face: the record B could not open is installed as damaged with the newer
/// record version, so no later catch-up reads it again (refresh skips records not newer than
/// the cache): the key stays DATA_LOSS on B until B is sealed and unsealed, although nothing
/// is damaged. Here the refresh comes from a change on B that is refused anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_node_could_not_open_yet_is_read_again_once_it_can() {
    let pg = PgServer::start();
    let url = pg.url();
    let share = init(&url).await;
    let a = Node::unsealed(&url, &share).await;
    create(&a, "orders").await;
    let b = Node::unsealed(&url, &share).await;

    a.seal.rotate_barrier().await.unwrap();
    a.keys.rotate(&name("orders")).await.unwrap();

    // Refused by the key's rules (there is no version 9), after B refreshed the key.
    let r = b
        .keys
        .update_config(&name("orders"), None, Some(9), None, None)
        .await;
    assert!(r.is_err());

    // B follows the store now: the barrier rotation first, then the key.
    b.keys.catch_up().await.unwrap();
    let ctx = EncryptionContext::default();
    match b.keys.encrypt(&name("orders"), b"hello", &ctx) {
        Ok(e) => assert_eq!(e.version, 2, "B encrypts with the version A rotated to"),
        Err(e) => panic!("the key is intact in storage, yet B refuses it after a catch-up: {e}"),
    }
}

/// Defect 2 (found in review): a cluster lock lives in a PostgreSQL session; when that session
/// ends (a PostgreSQL restart, a failover, a cut connection, an administrator's
/// pg_terminate_backend) the lock is gone and another node may take it. The holder must then
/// be unable to write as if it still held it: writes fenced by the lock (`put_locked`,
/// `delete_locked`, which the keystore uses for every change it makes under a lock) fail
/// instead of landing, so two creates of one name, or an orphan erasure under a rotation in
/// flight, stay excluded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fenced_by_a_lost_lock_fails() {
    use kms_server::storage::Expect;
    let pg = PgServer::start();
    let url = pg.url();
    let a = backend(&url).await;
    let b = backend(&url).await;
    let held = guard("lock on A", a.lock(&["name/orders".to_string()]))
        .await
        .unwrap();
    assert!(
        guard("try_lock on B", b.try_lock("name/orders"))
            .await
            .unwrap()
            .is_none()
    );
    // While held, fenced writes land.
    guard(
        "put_locked",
        a.put_locked(&held, "keys/x/meta", b"a".to_vec(), Expect::Absent),
    )
    .await
    .unwrap();

    // The holder's lock session ends (as in any PostgreSQL restart).
    let killed = pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted",
    );
    assert_eq!(killed, "1");
    let other = guard("lock on B", b.lock(&["name/orders".to_string()]))
        .await
        .unwrap();
    let r = guard(
        "put_locked",
        a.put_locked(&held, "keys/x/meta", b"b".to_vec(), Expect::Version(1)),
    )
    .await;
    assert!(r.is_err(), "a write fenced by a lost lock landed");
    let r = guard(
        "delete_locked",
        a.delete_locked(&held, "keys/x/meta", Expect::Any),
    )
    .await;
    assert!(r.is_err(), "a delete fenced by a lost lock landed");
    assert_eq!(a.get("keys/x/meta").await.unwrap().unwrap().value, b"a");
    drop(other);
    drop(held);
}

/// Defect 3 (postgres.rs `PgLock::drop` with an acquisition cut short): dropping a lock wait
/// (a client cancel or the server's request deadline) drops the client but not the session:
/// tokio-postgres keeps a connection open while a response is pending, so the session stays
/// queued in `pg_advisory_lock`, outside the pool, until the lock is granted (then it takes
/// the lock for a moment and closes). Each retry of a call waiting on a busy key adds one
/// PostgreSQL connection that no pool counts, until `max_connections` refuses every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_wait_leaves_no_session_behind() {
    let pg = PgServer::start();
    let url = pg.url();
    let a = backend(&url).await;
    let b = backend(&url).await;
    let _held = guard("lock on A", a.lock(&["key/busy".to_string()]))
        .await
        .unwrap();

    // More cancelled waits than B's lock pool has connections (16 / 2 = 8).
    for _ in 0..12 {
        let r = tokio::time::timeout(
            Duration::from_millis(150),
            b.lock(&["key/busy".to_string()]),
        )
        .await;
        assert!(r.is_err(), "the lock is held by A: the wait must time out");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = pg.psql(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
    );
    assert_eq!(
        waiting, "0",
        "sessions of cancelled lock waits are still queued for the lock in PostgreSQL"
    );
}

/// Defect 4 (keystore.rs `decrypt`, shared store): a ciphertext made on node A under a version
/// node B has not followed yet (A rotated moments ago, within the staleness bound) is refused
/// by B as "ciphertext authentication failed" (INVALID_ARGUMENT), the answer for tampered
/// data, which clients do not retry. Within the bound, a node that does not know a key id or
/// version on a shared store should say so retryably (UNAVAILABLE), or catch up first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_of_a_version_made_elsewhere_is_not_called_tampered() {
    let pg = PgServer::start();
    let url = pg.url();
    let share = init(&url).await;
    let a = Node::unsealed(&url, &share).await;
    create(&a, "orders").await;
    let b = Node::unsealed(&url, &share).await;

    a.keys.rotate(&name("orders")).await.unwrap();
    let ctx = EncryptionContext::default();
    let ct = a.keys.encrypt(&name("orders"), b"hello", &ctx).unwrap();
    assert_eq!(ct.version, 2);

    // As the Crypto service does before every decrypt.
    b.keys
        .follow_unknown_ciphertexts([ct.ciphertext.as_slice()])
        .await;
    match b.keys.decrypt(&ct.ciphertext, &ctx) {
        Ok(d) => assert_eq!(&d.plaintext[..], b"hello"),
        Err(KmsError::Unavailable(_)) => {}
        Err(e) => panic!("a genuine ciphertext made on another node is refused as: {e}"),
    }
}

/// Defect 5 (config.rs `Config::load`): a syntax error on the `[storage] url` line is
/// reported with toml's excerpt of that line, password included; the error is printed at
/// start and ends up in service logs. (A type error elsewhere in `[storage]` shows only the
/// `[storage]` header: that case is fine.)
#[test]
fn a_config_error_never_shows_the_database_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // A common slip: a backslash in the password, which TOML reads as a bad escape.
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\npolicies = \"p\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n\
         client_ca = \"ca\"\n[storage]\nbackend = \"postgres\"\n\
         url = \"postgresql://kms:Sup3rS3cretPw\\q@db.example/kms\"\n\
         [audit]\npath = \"audit.log\"\n",
    )
    .unwrap();
    let Err(e) = kms_server::Config::load(&path) else {
        panic!("a config with a bad escape in url was accepted");
    };
    eprintln!("{e}");
    assert!(
        !e.contains("Sup3rS3cretPw"),
        "the config error shows the database password: {e}"
    );
}

/// Defect 3, general form (postgres.rs `PostgresBackend::run`, timeout branch): an operation
/// that passes its time bound is "discarded" with `Object::take`, but the session stays open
/// (and queued) until PostgreSQL answers, outside the pool. Here the clock row is held by a
/// stuck writer (standing in for a node frozen or cut off in the middle of a write, whose
/// transaction PostgreSQL keeps open: no `idle_in_transaction_session_timeout`, server-side
/// TCP keepalive at the OS default of 2 hours); every write that times out meanwhile leaves
/// one more session behind, until `max_connections` refuses every node, reads included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_leaves_no_session_behind() {
    let pg = Arc::new(PgServer::start());
    let url = pg.url();
    let cfg: PostgresConfig = toml::from_str(&format!(
        "url = \"{url}\"\ntls = \"disable\"\nconnect_timeout_secs = 1"
    ))
    .unwrap();
    let b = guard("connect", PostgresBackend::connect(&cfg))
        .await
        .unwrap();

    // A writer stuck for 20 s with the clock row locked.
    let stuck = {
        let pg = pg.clone();
        std::thread::spawn(move || {
            pg.psql(
                "BEGIN; UPDATE kms_clock SET seq = seq WHERE id = 1; \
                 SELECT pg_sleep(20); COMMIT;",
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let r = guard(
            "put",
            b.put(
                &format!("k{i}"),
                b"v".to_vec(),
                kms_server::storage::Expect::Any,
            ),
        )
        .await;
        assert!(
            r.is_err(),
            "the clock row is locked: the write must time out"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = pg.psql(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'kms-server' AND wait_event_type = 'Lock'",
    );
    stuck.join().unwrap();
    assert_eq!(
        left, "0",
        "sessions of writes that timed out are still queued on the clock row"
    );
}
