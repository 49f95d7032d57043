//! One conformance suite for the storage backends: every check is written once against
//! `dyn Backend` and run on each backend (`sled_*` and `postgres_*` tests, made by the
//! `conformance!` macro at the end). PostgreSQL checks start a private server each
//! (`kms_tests::pg::PgServer`); PostgreSQL must be installed (see `.ci/run`). PostgreSQL
//! alone: two nodes on one database, a restore reaching the other node page by page, and the
//! database stopped, killed or hung under a live backend.
//!
//! `tokio::time::timeout` is only a hang guard, and the one short sleep only gives a broken
//! lock a chance to show: a correct backend passes whatever the timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kms_server::storage::{
    Backend, Expect, PostgresBackend, PostgresConfig, SledBackend, StorageError, Versioned,
};
use kms_tests::pg::PgServer;

/// What a check runs against: a store it can open (again), and a second, empty one.
enum Env {
    Sled {
        dir: tempfile::TempDir,
        other: tempfile::TempDir,
    },
    Postgres {
        pg: Mutex<PgServer>,
        url: String,
        /// The second database, created on first use.
        other_url: OnceLock<String>,
    },
}

impl Env {
    fn sled() -> Self {
        Env::Sled {
            dir: tempfile::tempdir().unwrap(),
            other: tempfile::tempdir().unwrap(),
        }
    }

    /// A private PostgreSQL server with an empty database.
    fn postgres() -> Self {
        let pg = tokio::task::block_in_place(PgServer::start);
        Env::Postgres {
            url: pg.url(),
            pg: Mutex::new(pg),
            other_url: OnceLock::new(),
        }
    }

    /// Opens the store (again): one more node on the same database for PostgreSQL. Reopening
    /// sled needs every earlier handle dropped.
    async fn open(&self) -> Arc<dyn Backend> {
        match self {
            Env::Sled { dir, .. } => Arc::new(SledBackend::open(dir.path()).unwrap()),
            Env::Postgres { url, .. } => Arc::new(connect(url).await),
        }
    }

    /// Opens a second store, empty at first (restore tests).
    async fn open_other(&self) -> Arc<dyn Backend> {
        match self {
            Env::Sled { other, .. } => Arc::new(SledBackend::open(other.path()).unwrap()),
            Env::Postgres { pg, other_url, .. } => {
                let url = other_url.get_or_init(|| {
                    tokio::task::block_in_place(|| pg.lock().unwrap().create_database("other"))
                });
                Arc::new(connect(url).await)
            }
        }
    }

    /// The PostgreSQL server (PostgreSQL-only checks).
    fn pg(&self) -> std::sync::MutexGuard<'_, PgServer> {
        match self {
            Env::Postgres { pg, .. } => pg.lock().unwrap(),
            Env::Sled { .. } => panic!("a PostgreSQL-only check"),
        }
    }

    /// Brings the store down hard and up again, for the durability check: PostgreSQL is
    /// SIGKILLed and restarted (crash recovery from its WAL). sled has no server; its
    /// reopen is the check.
    fn crash_restart(&self) {
        match self {
            Env::Sled { .. } => {}
            Env::Postgres { pg, .. } => tokio::task::block_in_place(|| {
                let mut pg = pg.lock().unwrap();
                pg.kill();
                pg.start_again();
            }),
        }
    }
}

/// A PostgreSQL backend on `url`, configured as a kms-server `[storage]` section would.
async fn connect(url: &str) -> PostgresBackend {
    let cfg: PostgresConfig =
        toml::from_str(&format!("url = \"{url}\"\ntls = \"disable\"")).unwrap();
    guard("connect", PostgresBackend::connect(&cfg))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL: {e}"))
}

/// Hang guard: a storage call that does not answer within this fails the test.
const HANG: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG:?}"))
}

fn conflict_found(r: Result<impl std::fmt::Debug, StorageError>) -> (Expect, u64) {
    match r {
        Err(StorageError::Conflict {
            expected, found, ..
        }) => (expected, found),
        other => panic!("expected a Conflict, got {other:?}"),
    }
}

fn v(version: u64, value: &[u8]) -> Versioned {
    Versioned {
        version,
        value: value.to_vec(),
    }
}

// ---- the checks ------------------------------------------------------------------------

/// A missing key reads as None, and lists as nothing.
async fn get_of_a_missing_key(env: &Env) {
    let b = env.open().await;
    assert_eq!(b.get("missing").await.unwrap(), None);
    assert_eq!(b.get("").await.unwrap(), None);
    assert!(b.list("missing").await.unwrap().is_empty());
}

/// Versions start at 1 and grow by one on every put, whatever the expectation.
async fn put_numbers_versions_from_one(env: &Env) {
    let b = env.open().await;
    assert_eq!(b.put("k", b"1".to_vec(), Expect::Absent).await.unwrap(), 1);
    assert_eq!(b.get("k").await.unwrap(), Some(v(1, b"1")));
    assert_eq!(
        b.put("k", b"2".to_vec(), Expect::Version(1)).await.unwrap(),
        2
    );
    assert_eq!(b.put("k", b"3".to_vec(), Expect::Any).await.unwrap(), 3);
    assert_eq!(
        b.put("k", b"4".to_vec(), Expect::Version(3)).await.unwrap(),
        4
    );
    assert_eq!(b.get("k").await.unwrap(), Some(v(4, b"4")));
    // Any on a missing key creates it at version 1.
    assert_eq!(b.put("new", b"n".to_vec(), Expect::Any).await.unwrap(), 1);
    assert_eq!(b.get("new").await.unwrap(), Some(v(1, b"n")));
    // A deleted record written again starts at version 1 again (as a new record).
    b.delete("new", Expect::Version(1)).await.unwrap();
    assert_eq!(
        b.put("new", b"m".to_vec(), Expect::Absent).await.unwrap(),
        1
    );
}

/// A failed compare-and-set returns Conflict with the version found and writes nothing.
async fn cas_conflicts_write_nothing(env: &Env) {
    let b = env.open().await;
    b.put("k", b"a".to_vec(), Expect::Absent).await.unwrap();
    b.put("k", b"b".to_vec(), Expect::Version(1)).await.unwrap();

    // Wrong version (older, newer).
    let r = b.put("k", b"x".to_vec(), Expect::Version(1)).await;
    assert_eq!(conflict_found(r), (Expect::Version(1), 2));
    let r = b.put("k", b"x".to_vec(), Expect::Version(3)).await;
    assert_eq!(conflict_found(r), (Expect::Version(3), 2));
    // Absent on an existing record.
    let r = b.put("k", b"x".to_vec(), Expect::Absent).await;
    assert_eq!(conflict_found(r), (Expect::Absent, 2));
    // Version on a missing record: found 0.
    let r = b.put("gone", b"x".to_vec(), Expect::Version(1)).await;
    assert_eq!(conflict_found(r), (Expect::Version(1), 0));
    // The message names the key.
    let e = b
        .put("k", b"x".to_vec(), Expect::Version(9))
        .await
        .unwrap_err();
    assert!(e.to_string().contains('k'), "{e}");

    assert_eq!(b.get("k").await.unwrap(), Some(v(2, b"b")));
    assert_eq!(b.get("gone").await.unwrap(), None);
    assert_eq!(b.list("").await.unwrap(), vec!["k".to_string()]);
}

/// Delete with an expectation checks it; without one it always succeeds, also on a missing
/// record.
async fn delete_with_and_without_expect(env: &Env) {
    let b = env.open().await;
    b.put("a", b"1".to_vec(), Expect::Absent).await.unwrap();
    b.put("a", b"2".to_vec(), Expect::Any).await.unwrap();
    b.put("b", b"1".to_vec(), Expect::Absent).await.unwrap();

    let r = b.delete("a", Expect::Version(1)).await;
    assert_eq!(conflict_found(r), (Expect::Version(1), 2));
    let r = b.delete("a", Expect::Absent).await;
    assert_eq!(conflict_found(r), (Expect::Absent, 2));
    let r = b.delete("missing", Expect::Version(1)).await;
    assert_eq!(conflict_found(r), (Expect::Version(1), 0));
    assert_eq!(b.get("a").await.unwrap(), Some(v(2, b"2")));

    b.delete("a", Expect::Version(2)).await.unwrap();
    assert_eq!(b.get("a").await.unwrap(), None);
    b.delete("b", Expect::Any).await.unwrap();
    assert_eq!(b.get("b").await.unwrap(), None);
    // A missing record: Any and Absent are both satisfied.
    b.delete("a", Expect::Any).await.unwrap();
    b.delete("never", Expect::Any).await.unwrap();
    b.delete("never", Expect::Absent).await.unwrap();
    assert!(b.list("").await.unwrap().is_empty());
}

/// List returns exactly the keys that start with the prefix, in byte order (not a
/// collation's order), with `_` and `%` taken literally.
async fn list_by_prefix_in_byte_order(env: &Env) {
    let b = env.open().await;
    let keys = [
        "ab", "a0", "a/\u{e9}", "a/b/", "a/b", "a/c", "a", "b", "a_b", "a%", "A", "a/B",
    ];
    for k in keys {
        b.put(k, k.as_bytes().to_vec(), Expect::Absent)
            .await
            .unwrap();
    }
    let mut all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    all.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(b.list("").await.unwrap(), all);

    let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        b.list("a/").await.unwrap(),
        l(&["a/B", "a/b", "a/b/", "a/c", "a/\u{e9}"])
    );
    assert_eq!(b.list("a/b").await.unwrap(), l(&["a/b", "a/b/"]));
    assert_eq!(b.list("a/b/").await.unwrap(), l(&["a/b/"]));
    assert_eq!(
        b.list("a").await.unwrap(),
        l(&[
            "a", "a%", "a/B", "a/b", "a/b/", "a/c", "a/\u{e9}", "a0", "a_b", "ab"
        ])
    );
    assert_eq!(b.list("a/\u{e9}").await.unwrap(), l(&["a/\u{e9}"]));
    // Wildcards of SQL LIKE are plain characters here.
    assert_eq!(b.list("a_").await.unwrap(), l(&["a_b"]));
    assert_eq!(b.list("a%").await.unwrap(), l(&["a%"]));
    // No match, and a prefix longer than every key.
    assert!(b.list("c").await.unwrap().is_empty());
    assert!(b.list("a/b//").await.unwrap().is_empty());
    assert!(b.list("B").await.unwrap().is_empty());
}

/// Values of 0 bytes, 1 MiB and every byte value come back exactly.
async fn values_empty_large_and_binary(env: &Env) {
    let b = env.open().await;
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    b.put("empty", Vec::new(), Expect::Absent).await.unwrap();
    b.put("bytes", all_bytes.clone(), Expect::Absent)
        .await
        .unwrap();
    b.put("big", big.clone(), Expect::Absent).await.unwrap();
    assert_eq!(b.get("empty").await.unwrap(), Some(v(1, b"")));
    assert_eq!(b.get("bytes").await.unwrap(), Some(v(1, &all_bytes)));
    assert_eq!(b.get("big").await.unwrap(), Some(v(1, &big)));
    // Overwrite the big one with an empty one and back.
    b.put("big", Vec::new(), Expect::Version(1)).await.unwrap();
    assert_eq!(b.get("big").await.unwrap(), Some(v(2, b"")));
    b.put("big", big.clone(), Expect::Version(2)).await.unwrap();
    assert_eq!(b.get("big").await.unwrap().unwrap().value, big);
}

/// Everything acknowledged is there after the store is closed (and, for PostgreSQL, the
/// server killed and restarted) and opened again, versions included.
async fn durable_across_reopen(env: &Env) {
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 253) as u8).collect();
    {
        let b = env.open().await;
        for i in 0..50u32 {
            b.put(
                &format!("r/{i:02}"),
                i.to_be_bytes().to_vec(),
                Expect::Absent,
            )
            .await
            .unwrap();
        }
        b.put("r/07", b"seven".to_vec(), Expect::Version(1))
            .await
            .unwrap();
        b.delete("r/13", Expect::Version(1)).await.unwrap();
        b.put("big", big.clone(), Expect::Absent).await.unwrap();
    }
    env.crash_restart();
    let b = env.open().await;
    let keys = b.list("r/").await.unwrap();
    assert_eq!(keys.len(), 49);
    for i in 0..50u32 {
        let got = b.get(&format!("r/{i:02}")).await.unwrap();
        match i {
            13 => assert_eq!(got, None),
            7 => assert_eq!(got, Some(v(2, b"seven"))),
            _ => assert_eq!(got, Some(v(1, &i.to_be_bytes()))),
        }
    }
    assert_eq!(b.get("big").await.unwrap(), Some(v(1, &big)));
    // And it still takes writes at the right versions.
    assert_eq!(
        b.put("r/07", b"8".to_vec(), Expect::Version(2))
            .await
            .unwrap(),
        3
    );
}

/// Increments `counter` by one with compare-and-set, retrying on Conflict.
async fn increment(b: &dyn Backend, counter: &str) -> u32 {
    let mut conflicts = 0;
    loop {
        let cur = b.get(counter).await.unwrap().unwrap();
        let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
        match b
            .put(
                counter,
                (n + 1).to_string().into_bytes(),
                Expect::Version(cur.version),
            )
            .await
        {
            Ok(version) => {
                assert_eq!(version, cur.version + 1);
                return conflicts;
            }
            Err(StorageError::Conflict { found, .. }) => {
                assert!(found > cur.version, "a conflict must find a newer version");
                conflicts += 1;
            }
            Err(e) => panic!("increment failed: {e}"),
        }
    }
}

/// 8 writers × 50 compare-and-set increments of one counter: no increment is lost or
/// applied twice (value 400, version 401).
async fn concurrent_cas_writers(env: &Env) {
    concurrent_writers_on(&[env.open().await]).await;
}

/// The writers are spread over `nodes` (one, or several backends on one store).
async fn concurrent_writers_on(nodes: &[Arc<dyn Backend>]) {
    nodes[0]
        .put("counter", b"0".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let b = nodes[t % nodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..50 {
                conflicts += increment(&*b, "counter").await;
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += guard("a writer", t).await.unwrap();
    }
    eprintln!("8 writers x 50 increments: {conflicts} conflicts retried");
    for b in nodes {
        assert_eq!(b.get("counter").await.unwrap(), Some(v(401, b"400")));
    }
}

/// A snapshot is every record with its version, in byte order of the keys.
async fn snapshot_equals_what_was_written(env: &Env) {
    let b = env.open().await;
    assert!(b.snapshot().await.unwrap().is_empty());
    b.put("b", b"b1".to_vec(), Expect::Absent).await.unwrap();
    b.put("b", b"b2".to_vec(), Expect::Version(1))
        .await
        .unwrap();
    b.put("a/\u{e9}", vec![0, 255], Expect::Absent)
        .await
        .unwrap();
    b.put("a0", Vec::new(), Expect::Absent).await.unwrap();
    b.put("ab", b"x".to_vec(), Expect::Absent).await.unwrap();
    b.put("gone", b"x".to_vec(), Expect::Absent).await.unwrap();
    b.delete("gone", Expect::Any).await.unwrap();
    assert_eq!(
        b.snapshot().await.unwrap(),
        vec![
            ("a/\u{e9}".to_string(), v(1, &[0, 255])),
            ("a0".to_string(), v(1, b"")),
            ("ab".to_string(), v(1, b"x")),
            ("b".to_string(), v(2, b"b2")),
        ]
    );
}

/// Restore into an empty store keeps the versions; into a non-empty one it is NotEmpty and
/// writes nothing.
async fn restore_keeps_versions_and_refuses_a_non_empty_store(env: &Env) {
    let records = vec![
        ("a".to_string(), v(7, b"seven")),
        ("a/b".to_string(), v(1, b"")),
        ("z".to_string(), v(3, &[0, 1, 2, 255])),
    ];
    let target = env.open_other().await;
    target.restore(records.clone()).await.unwrap();
    assert_eq!(target.snapshot().await.unwrap(), records);
    assert_eq!(target.get("a").await.unwrap(), Some(v(7, b"seven")));
    // Compare-and-set continues from the restored versions.
    assert_eq!(
        target
            .put("a", b"eight".to_vec(), Expect::Version(7))
            .await
            .unwrap(),
        8
    );

    let b = env.open().await;
    b.put("existing", b"e".to_vec(), Expect::Absent)
        .await
        .unwrap();
    match b.restore(records).await {
        Err(StorageError::NotEmpty(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    assert_eq!(
        b.snapshot().await.unwrap(),
        vec![("existing".to_string(), v(1, b"e"))]
    );
}

/// `lock` excludes: while `a` holds a lock, `b` (the same backend, or another node) waits
/// for it, proven by a counter set just before the guard drops; `try_lock` returns None while
/// it is held and Some after.
async fn locks_exclude(env: &Env) {
    let b = env.open().await;
    locks_exclude_between(b.clone(), b).await;
}

async fn locks_exclude_between(a: Arc<dyn Backend>, b: Arc<dyn Backend>) {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Several names, given unsorted and with a repeat.
    let held = guard("lock", a.lock(&names(&["y", "x", "y"])))
        .await
        .unwrap();
    assert!(guard("try_lock", b.try_lock("x")).await.unwrap().is_none());
    assert!(guard("try_lock", b.try_lock("y")).await.unwrap().is_none());
    assert!(guard("try_lock", a.try_lock("x")).await.unwrap().is_none());
    // A name no one holds is free.
    let other = guard("try_lock", b.try_lock("z")).await.unwrap();
    assert!(other.is_some());
    drop(other);

    let released = Arc::new(AtomicU32::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let b = b.clone();
        let released = released.clone();
        tokio::spawn(async move {
            started_tx.send(()).unwrap();
            let g = b.lock(&names(&["x"])).await.unwrap();
            // Read once the lock is ours: the holder sets it before releasing.
            let seen = released.load(Ordering::SeqCst);
            (g, seen)
        })
    };
    started_rx.await.unwrap();
    // Give the waiter time to reach its lock call; the result does not depend on it (a
    // broken lock is only more likely to be caught).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "lock taken while held elsewhere");
    released.store(1, Ordering::SeqCst);
    drop(held);
    let (g, seen) = guard("the waiting lock", waiter).await.unwrap();
    assert_eq!(
        seen, 1,
        "the second lock was granted before the first was released"
    );
    // Now held by the waiter: the other side cannot take it.
    assert!(guard("try_lock", a.try_lock("x")).await.unwrap().is_none());
    // "y" was released with the first guard.
    let y = guard("try_lock", a.try_lock("y")).await.unwrap();
    assert!(y.is_some());
    drop(y);
    drop(g);
    let x = try_lock_once_released(&*a, "x").await;
    // try_lock's guard excludes too.
    assert!(guard("try_lock", b.try_lock("x")).await.unwrap().is_none());
    drop(x);
    drop(try_lock_once_released(&*b, "x").await);
}

/// `try_lock(name)` until it succeeds (hang guard only). A dropped guard's lock is free at
/// once on sled; PostgreSQL releases it with a query sent from the guard's `Drop`, so another
/// caller may still find it held for a round trip.
async fn try_lock_once_released(b: &dyn Backend, name: &str) -> kms_server::storage::LockGuard {
    guard("try_lock once released", async {
        let mut tries = 0;
        loop {
            tries += 1;
            if let Some(g) = b.try_lock(name).await.unwrap() {
                if tries > 1 {
                    eprintln!(
                        "{}: try_lock({name}) after a release: {tries} tries",
                        b.name()
                    );
                }
                return g;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

// ---- PostgreSQL only: several nodes on one database ----------------------------------------

/// Waits (hang guard only) until `b.changed()` has resolved and a change of `key` since `seq`
/// is listed; returns how many times `changed` resolved.
async fn wait_for_change(
    b: &dyn Backend,
    mut changed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
    seq: u64,
    key: &str,
) -> u32 {
    let mut wakeups = 0;
    loop {
        guard("changed()", &mut changed).await;
        wakeups += 1;
        let c = b.changes_since(seq).await.unwrap();
        if c.keys.iter().any(|k| k == key) {
            return wakeups;
        }
        changed = b.changed();
    }
}

/// The keys in the order of their last occurrence.
fn last_occurrences(keys: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for k in keys {
        out.retain(|x| x != k);
        out.push(k);
    }
    out
}

/// A `changed()` future of `b` that has been polled once, so it is registered, and is still
/// pending (wake-ups left over from earlier changes are used up first).
async fn armed_changed(
    b: &dyn Backend,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    for _ in 0..100 {
        let mut f = b.changed();
        if tokio::time::timeout(Duration::ZERO, &mut f).await.is_err() {
            return f;
        }
    }
    panic!("changed() keeps resolving with no change being made");
}

/// Two backends on one database (two nodes) see each other's writes at once; `changes_since`
/// lists the other's puts in commit order (not its deletes); `changed()` resolves after the
/// other writes; locks exclude across the two; concurrent writers on both lose nothing.
async fn two_nodes_share_one_store(env: &Env) {
    let a = env.open().await;
    let b = env.open().await;
    assert!(a.shared() && b.shared());
    assert_eq!(a.name(), "postgres");

    a.put("k", b"from a".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(v(1, b"from a")));
    b.put("k", b"from b".to_vec(), Expect::Version(1))
        .await
        .unwrap();
    assert_eq!(a.get("k").await.unwrap(), Some(v(2, b"from b")));
    let r = a.put("k", b"stale".to_vec(), Expect::Version(1)).await;
    assert_eq!(conflict_found(r), (Expect::Version(1), 2));

    // The change sequence: b's puts, as a sees them, in commit order.
    let seq0 = a.change_seq().await.unwrap();
    assert_eq!(b.change_seq().await.unwrap(), seq0);
    let changed = armed_changed(&*a).await;
    let t0 = Instant::now();
    b.put("x/1", b"1".to_vec(), Expect::Any).await.unwrap();
    let wakeups = wait_for_change(&*a, changed, seq0, "x/1").await;
    eprintln!(
        "node A saw node B's put {:?} after it returned ({wakeups} wake-ups)",
        t0.elapsed()
    );
    b.put("x/2", b"2".to_vec(), Expect::Any).await.unwrap();
    b.put("x/1", b"3".to_vec(), Expect::Any).await.unwrap();
    let c = a.changes_since(seq0).await.unwrap();
    // "A key may repeat": each key at least at its last put, and those in commit order.
    assert_eq!(last_occurrences(&c.keys), vec!["x/2", "x/1"], "{c:?}");
    assert_eq!(c.seq, a.change_seq().await.unwrap());
    assert!(c.seq >= seq0 + 3);
    // Nothing new since then: nothing listed, position kept.
    let again = a.changes_since(c.seq).await.unwrap();
    assert!(again.keys.is_empty());
    assert_eq!(again.seq, c.seq);
    // A delete moves the sequence but is not listed.
    b.delete("x/2", Expect::Any).await.unwrap();
    let after_delete = a.changes_since(c.seq).await.unwrap();
    assert!(after_delete.keys.is_empty(), "{after_delete:?}");
    assert!(a.change_seq().await.unwrap() > c.seq);
    assert_eq!(a.get("x/2").await.unwrap(), None);

    locks_exclude_between(a.clone(), b.clone()).await;

    a.delete("k", Expect::Any).await.unwrap();
    concurrent_writers_on(&[a, b]).await;
}

/// PostgreSQL unreachable (stopped, then killed): calls fail with `Io` in bounded time, a
/// write that failed is not half-done, and once PostgreSQL is back the same backend works
/// again and `changed()` fires (changes may have been missed) without being reopened.
async fn unreachable_database_then_recovers(env: &Env) {
    let a = env.open().await;
    a.put("k", b"1".to_vec(), Expect::Absent).await.unwrap();
    let mut n = 1;
    for how in ["stop", "kill"] {
        tokio::task::block_in_place(|| match how {
            "stop" => env.pg().stop(),
            _ => env.pg().kill(),
        });
        let t = Instant::now();
        let r = guard("get with PostgreSQL down", a.get("k")).await;
        let get_time = t.elapsed();
        match r {
            Err(StorageError::Io(msg)) => {
                eprintln!("after {how}: get failed in {get_time:?}: {msg}");
                assert!(
                    msg.contains("127.0.0.1"),
                    "the message names the database: {msg}"
                );
            }
            other => panic!("get with PostgreSQL down ({how}): expected Io, got {other:?}"),
        }
        let t = Instant::now();
        let r = guard(
            "put with PostgreSQL down",
            a.put("k", b"lost".to_vec(), Expect::Version(n)),
        )
        .await;
        assert!(matches!(r, Err(StorageError::Io(_))), "{r:?}");
        let r = guard("list with PostgreSQL down", a.list("")).await;
        assert!(matches!(r, Err(StorageError::Io(_))), "{r:?}");
        let r = guard("try_lock with PostgreSQL down", a.try_lock("l")).await;
        assert!(
            matches!(r, Err(StorageError::Io(_))),
            "{:?}",
            r.map(|g| g.is_some())
        );
        let r = guard("lock with PostgreSQL down", a.lock(&["l".to_string()])).await;
        assert!(matches!(r, Err(StorageError::Io(_))), "{:?}", r.map(|_| ()));
        eprintln!(
            "after {how}: put, list, try_lock, lock failed in {:?}",
            t.elapsed()
        );

        let changed = armed_changed(&*a).await;
        tokio::task::block_in_place(|| env.pg().start_again());
        // The listener reconnects and says so: changes may have been missed.
        guard("changed() after PostgreSQL came back", changed).await;
        let t = Instant::now();
        let mut attempts = 0;
        let got = loop {
            attempts += 1;
            match a.get("k").await {
                Ok(got) => break got,
                Err(e) if attempts < 3 => eprintln!("after {how}, restarted: get failed: {e}"),
                Err(e) => panic!("after {how}: the backend did not recover: {e}"),
            }
        };
        eprintln!(
            "after {how}, restarted: get answered in {:?} ({attempts} attempt(s))",
            t.elapsed()
        );
        // The failed put wrote nothing.
        assert_eq!(got, Some(v(n, n.to_string().as_bytes())));
        n += 1;
        a.put("k", n.to_string().into_bytes(), Expect::Version(n - 1))
            .await
            .unwrap();
        assert!(a.try_lock("l").await.unwrap().is_some());
        drop(a.lock(&["l".to_string()]).await.unwrap());
    }
}

/// A restore of 12,345 records on one node reaches the other through `changed()` and
/// `changes_since`, page by page (a call returns at most a few thousand keys), each record
/// once, in commit order; the other node lists and snapshots them all.
async fn restore_reaches_other_nodes_page_by_page(env: &Env) {
    let a = env.open().await;
    let b = env.open().await;
    let records: Vec<(String, Versioned)> = (0..12_345u32)
        .map(|i| {
            let value = i.to_be_bytes().to_vec();
            (format!("p/{i:05}"), v(u64::from(i % 5) + 1, &value))
        })
        .collect();
    let mut pos = b.change_seq().await.unwrap();
    let changed = armed_changed(&*b).await;
    a.restore(records.clone()).await.unwrap();
    guard("changed() after a restore by another node", changed).await;
    let end = b.change_seq().await.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    while pos < end {
        let c = b.changes_since(pos).await.unwrap();
        pages += 1;
        assert!(c.seq > pos, "changes_since made no progress from {pos}");
        assert!(
            c.keys.len() <= 10_000,
            "one call returned {} keys",
            c.keys.len()
        );
        seen.extend(c.keys);
        pos = c.seq;
        assert!(pages < 100, "changes_since does not reach the end");
    }
    assert_eq!(pos, end);
    assert!(pages >= 2, "12,345 changes came in {pages} call(s)");
    let keys: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(last_occurrences(&seen), keys);
    eprintln!("12,345 restored records: {pages} changes_since calls");
    assert_eq!(b.list("p/").await.unwrap(), keys);
    assert_eq!(b.snapshot().await.unwrap(), records);
    // Writes go on from the restored versions and are listed after them.
    assert_eq!(
        b.put("p/00004", b"x".to_vec(), Expect::Version(5))
            .await
            .unwrap(),
        6
    );
    let c = a.changes_since(end).await.unwrap();
    assert_eq!(c.keys, vec!["p/00004"]);
}

/// Asserts that `f` fails with `Io` (hang guard only); prints how long it took.
async fn fails_with_io(what: &str, f: impl std::future::Future<Output = Result<(), StorageError>>) {
    let t = Instant::now();
    let e = guard(what, f).await.expect_err(what);
    assert!(matches!(e, StorageError::Io(_)), "{what}: {e:?}");
    eprintln!(
        "{what} with PostgreSQL hung: Io after {:?}: {e}",
        t.elapsed()
    );
}

/// PostgreSQL hung (SIGSTOP: connections stay open, nothing answers): get, put, list and
/// try_lock fail with `Io` in bounded time instead of hanging, the cut write is not applied
/// when the database wakes up, and the same backend works again.
async fn hung_database_fails_in_bounded_time(env: &Env) {
    let a = env.open().await;
    a.put("k", b"1".to_vec(), Expect::Absent).await.unwrap();
    env.pg().pause();
    let (a1, a2, a3, a4) = (a.clone(), a.clone(), a.clone(), a.clone());
    tokio::join!(
        fails_with_io("get", async move { a1.get("k").await.map(drop) }),
        fails_with_io("put", async move {
            a2.put("k", b"cut".to_vec(), Expect::Version(1))
                .await
                .map(drop)
        }),
        fails_with_io("list", async move { a3.list("").await.map(drop) }),
        fails_with_io("try_lock", async move { a4.try_lock("l").await.map(drop) }),
    );
    env.pg().resume();
    let t = Instant::now();
    let mut attempts = 0;
    let got = loop {
        attempts += 1;
        match guard("get after resume", a.get("k")).await {
            Ok(got) => break got,
            Err(e) if attempts < 3 => eprintln!("after resume: get failed: {e}"),
            Err(e) => panic!("after resume: the backend did not recover: {e}"),
        }
    };
    eprintln!(
        "after resume: get answered in {:?} ({attempts} attempt(s))",
        t.elapsed()
    );
    assert_eq!(got, Some(v(1, b"1")), "the cut put was applied");
    assert_eq!(
        a.put("k", b"2".to_vec(), Expect::Version(1)).await.unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restore_reaches_other_nodes_page_by_page() {
    restore_reaches_other_nodes_page_by_page(&Env::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_hung_database_fails_in_bounded_time() {
    hung_database_fails_in_bounded_time(&Env::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_share_one_store() {
    two_nodes_share_one_store(&Env::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_database_then_recovers() {
    unreachable_database_then_recovers(&Env::postgres()).await;
}

// ---- the tests: each check on each backend -------------------------------------------------

macro_rules! conformance {
    ($($check:ident => $sled:ident, $postgres:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $sled() {
                $check(&Env::sled()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $postgres() {
                $check(&Env::postgres()).await;
            }
        )*
    };
}

conformance! {
    get_of_a_missing_key => sled_get_of_a_missing_key, postgres_get_of_a_missing_key;
    put_numbers_versions_from_one
        => sled_put_numbers_versions_from_one, postgres_put_numbers_versions_from_one;
    cas_conflicts_write_nothing
        => sled_cas_conflicts_write_nothing, postgres_cas_conflicts_write_nothing;
    delete_with_and_without_expect
        => sled_delete_with_and_without_expect, postgres_delete_with_and_without_expect;
    list_by_prefix_in_byte_order
        => sled_list_by_prefix_in_byte_order, postgres_list_by_prefix_in_byte_order;
    values_empty_large_and_binary
        => sled_values_empty_large_and_binary, postgres_values_empty_large_and_binary;
    durable_across_reopen => sled_durable_across_reopen, postgres_durable_across_reopen;
    concurrent_cas_writers => sled_concurrent_cas_writers, postgres_concurrent_cas_writers;
    snapshot_equals_what_was_written
        => sled_snapshot_equals_what_was_written, postgres_snapshot_equals_what_was_written;
    restore_keeps_versions_and_refuses_a_non_empty_store
        => sled_restore_keeps_versions_and_refuses_a_non_empty_store,
           postgres_restore_keeps_versions_and_refuses_a_non_empty_store;
    locks_exclude => sled_locks_exclude, postgres_locks_exclude;
}

// ---- the test server itself ----------------------------------------------------------------

/// The PostgreSQL test server: SQL runs, data survives a fast stop and a SIGKILL, the
/// database's collation is linguistic (so byte order must come from the backend), and two
/// instances run side by side.
#[test]
fn pg_server_stops_kills_restarts_and_runs_side_by_side() {
    let mut pg = kms_tests::pg::PgServer::start();
    let other = kms_tests::pg::PgServer::start();
    assert_ne!(pg.port(), other.port());
    assert_eq!(pg.psql("SELECT 1"), "1");
    pg.psql("CREATE TABLE t (k text); INSERT INTO t VALUES ('B'), ('a'), ('a/f'), ('a/\u{e9}')");
    // en-US: case is a later level and an accent does not move a letter, unlike byte order.
    assert_eq!(
        pg.psql("SELECT string_agg(k, ',' ORDER BY k) FROM t"),
        "a,a/\u{e9},a/f,B"
    );
    assert_eq!(
        pg.psql("SELECT string_agg(k, ',' ORDER BY k COLLATE \"C\") FROM t"),
        "B,a,a/f,a/\u{e9}"
    );
    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "4");
    pg.psql("INSERT INTO t VALUES ('z')");
    pg.kill();
    pg.start_again();
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "5");
    assert_eq!(
        other.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
    assert!(pg.storage_toml().contains("backend = \"postgres\""));
    assert!(
        pg.storage_toml_with("max_staleness_ms = 500")
            .ends_with("tls = \"disable\"\nmax_staleness_ms = 500\n")
    );
}
