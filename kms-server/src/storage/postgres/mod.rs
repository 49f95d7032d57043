//! The PostgreSQL backend: one database that several kms-server nodes share.
//!
//! Schema (created, and later migrated, by the server at open, under an advisory lock):
//! `kms_records(key text COLLATE "C" PRIMARY KEY, value bytea, version bigint, changed bigint)`
//! with an index on `changed`, the one-row `kms_clock(id = 1, seq bigint)`, and
//! `kms_schema(id = 1, version int)`. Keys are compared byte by byte (`COLLATE "C"`), so
//! `list` and `snapshot` return them in the same order as sled does.
//!
//! Writes: every `put`/`delete` is one transaction that first increments `kms_clock.seq`. That
//! row lock is held until the transaction ends, so writers are serialised and commit in
//! sequence order: a reader that sees `seq = N` knows every change numbered `N` or less is
//! committed and visible, which makes [`Backend::changes_since`] exact. The written row
//! records its sequence number in `changed`, and the transaction sends a
//! `NOTIFY kms_changes` (delivered at commit only) that wakes the other nodes. Commits wait
//! for the WAL flush (`synchronous_commit`), so an `Ok` is durable.
//!
//! Locks: PostgreSQL session advisory locks, taken on connections of a pool of their own, so
//! that nodes waiting for a lock can never use up the connections that the lock holders need
//! to write (that would deadlock).
//!
//! See docs/postgres.md for the operator's view (settings, TLS, what happens when the database
//! is unreachable).

mod changes;
mod config;
mod schema;
mod session;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::Notify;
use tokio_postgres::IsolationLevel;

use self::changes::listen_forever;
use self::config::{Connector, build_pool, connect_one, describe, with_options};
use self::schema::{check_settings, migrate};
use self::session::{Fail, to_i64, to_u64};
use self::writes::{delete_tx, put_tx};
use super::{Backend, Changes, Expect, LockGuard, StorageError, Versioned};

pub use self::config::{PostgresConfig, PostgresTls};

/// Records per INSERT statement of a restore.
const RESTORE_BATCH: usize = 1000;
/// Longest a snapshot (a backup's copy of every record) may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Fewest connections of the lock pool: a node holds its name's lock while it runs, and the
/// scheduler holds its job lock while it takes a key's lock, with room left for key changes.
const MIN_LOCK_CONNECTIONS: usize = 4;
/// Longest wait for a lock connection when all are taken (by holders and waiters).
const LOCK_CONNECTION_WAIT: Duration = Duration::from_secs(30);

const GET: &str = "SELECT value, version FROM kms_records WHERE key = $1";
const LIST: &str = "SELECT key FROM kms_records WHERE starts_with(key, $1) ORDER BY key";

/// A PostgreSQL database shared by any number of kms-server nodes.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reads and writes.
    pool: Pool,
    /// Advisory locks only (see the module documentation).
    lock_pool: Pool,
    /// `host:port`, for messages.
    target: String,
    /// Bound on one short operation (get, put, ...) once it has a connection.
    op_timeout: Duration,
    /// Bound on waiting for a pooled connection.
    connect_timeout: Duration,
    /// Woken on every NOTIFY and after every reconnection of the listener.
    notify: Arc<Notify>,
    /// For cancel requests.
    connector: Connector,
    /// The LISTEN task; stopped with the backend.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresBackend {
    /// Connects, checks the server's durability settings, creates or checks the schema, and
    /// starts the change listener.
    ///
    /// Returns `Io` when PostgreSQL cannot be reached within `connect_timeout_secs` (a node
    /// refuses to start then: an unreachable database at start is an operator error to see at
    /// once), or when the schema is newer than this binary knows.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, StorageError> {
        cfg.check().map_err(StorageError::Io)?;
        let mut pg = cfg.pg_config()?;
        let connector = cfg.connector()?;
        let target = describe(&pg, false);
        let timeout = cfg.connect_timeout();

        let (client, task) = connect_one(&pg, &connector, timeout, &target).await?;
        let setup = async {
            let overridden = check_settings(&client, &target).await?;
            if overridden {
                // Our own sessions commit durably whatever the server's default.
                pg = with_options(&pg, "-c synchronous_commit=on");
            }
            migrate(&client, &target).await
        };
        let setup = tokio::time::timeout(timeout.saturating_mul(6), setup).await;
        drop(client);
        task.abort();
        match setup {
            Ok(r) => r?,
            Err(_) => {
                return Err(StorageError::Io(format!(
                    "PostgreSQL at {target} did not finish the schema check within {} s",
                    timeout.as_secs() * 6
                )));
            }
        }

        // Server-side bounds too, so that a session this node gave up on (a timeout, a dropped
        // call) or a node frozen inside a transaction does not stay queued, or keep the clock's
        // row locked, on the server: the statement is cancelled, the idle transaction ended.
        let op_timeout = timeout.saturating_mul(2);
        let bound_ms = op_timeout.as_millis();
        let main_pg = with_options(
            &pg,
            &format!(
                "-c statement_timeout={bound_ms} -c idle_in_transaction_session_timeout={bound_ms}"
            ),
        );
        let lock_pg = with_options(
            &pg,
            &format!("-c idle_in_transaction_session_timeout={bound_ms}"),
        );
        let pool = build_pool(&main_pg, &connector, cfg.pool_size, Some(timeout), timeout)?;
        // A node holds some locks for long (its name while it runs, the scheduler's job lock
        // while it takes key locks), so the lock pool has a floor; a wait for one of its
        // connections is bounded, so a node whose lock connections are all taken gets an error
        // (and its scheduler retries on its next run) rather than waiting for ever.
        let lock_pool = build_pool(
            &lock_pg,
            &connector,
            (cfg.pool_size / 2).max(MIN_LOCK_CONNECTIONS),
            Some(LOCK_CONNECTION_WAIT.max(timeout)),
            timeout,
        )?;
        let notify = Arc::new(Notify::new());
        let connector_for_inner = connector.clone();
        let listener = tokio::spawn(listen_forever(
            pg.clone(),
            connector,
            notify.clone(),
            target.clone(),
            timeout,
        ));
        tracing::info!(
            "storage: PostgreSQL at {} (tls {:?}, {} connections)",
            describe(&pg, true),
            cfg.tls,
            cfg.pool_size
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                lock_pool,
                target,
                op_timeout,
                connect_timeout: timeout,
                notify,
                connector: connector_for_inner,
                listener,
            }),
        })
    }
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            let stmt = c.prepare_cached(GET).await?;
            let Some(row) = c.query_opt(&stmt, &[&key]).await? else {
                return Ok(None);
            };
            let value: Vec<u8> = row.try_get(0)?;
            let version = to_u64(key, row.try_get(1)?)?;
            Ok(Some(Versioned { version, value }))
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StorageError> {
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            put_tx(c, key, &value, expect).await
        })
        .await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StorageError> {
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            delete_tx(c, key, expect).await
        })
        .await
    }

    async fn put_locked(
        &self,
        lock: &LockGuard,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
    ) -> Result<u64, StorageError> {
        self.on_lock_session(lock, async |c: &mut Object| {
            put_tx(c, key, &value, expect).await
        })
        .await
    }

    async fn delete_locked(
        &self,
        lock: &LockGuard,
        key: &str,
        expect: Expect,
    ) -> Result<(), StorageError> {
        self.on_lock_session(lock, async |c: &mut Object| delete_tx(c, key, expect).await)
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            let stmt = c.prepare_cached(LIST).await?;
            let rows = c.query(&stmt, &[&prefix]).await?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map_err(Fail::from))
                .collect()
        })
        .await
    }

    async fn snapshot(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        let conn = self.conn().await?;
        self.run(conn, SNAPSHOT_TIMEOUT, async |c: &mut Object| {
            // One consistent view that does not block writers.
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            // Longer than the pool's statement bound: copying every record takes a while.
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                SNAPSHOT_TIMEOUT.as_millis()
            ))
            .await?;
            let rows = tx
                .query(
                    "SELECT key, value, version FROM kms_records ORDER BY key",
                    &[],
                )
                .await?;
            tx.commit().await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let key: String = row.try_get(0)?;
                let value: Vec<u8> = row.try_get(1)?;
                let version = to_u64(&key, row.try_get(2)?)?;
                out.push((key, Versioned { version, value }));
            }
            Ok(out)
        })
        .await
    }

    async fn restore(&self, records: Vec<(String, Versioned)>) -> Result<(), StorageError> {
        let conn = self.conn().await?;
        let target = self.inner.target.clone();
        self.run(conn, SNAPSHOT_TIMEOUT, async |c: &mut Object| {
            let tx = c.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {0}; \
                 SET LOCAL idle_in_transaction_session_timeout = {0}",
                SNAPSHOT_TIMEOUT.as_millis()
            ))
            .await?;
            // The clock's row lock keeps every writer out until this commits.
            let seq: i64 = tx
                .query_one("SELECT seq FROM kms_clock WHERE id = 1 FOR UPDATE", &[])
                .await?
                .try_get(0)?;
            let held: i64 = tx
                .query_one("SELECT count(*) FROM kms_records", &[])
                .await?
                .try_get(0)?;
            if held > 0 {
                tx.rollback().await?;
                return Err(StorageError::NotEmpty(format!(
                    "the PostgreSQL database at {target} already holds {held} records: \
                     restore only into an empty database (a new database, or drop the \
                     kms_records rows after a backup of them); nothing was written"
                ))
                .into());
            }
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO kms_records (key, value, version, changed) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[])",
                )
                .await?;
            // Each record gets a sequence number of its own beyond the clock, as if written
            // one by one.
            let mut next = seq;
            for batch in records.chunks(RESTORE_BATCH) {
                let mut keys = Vec::with_capacity(batch.len());
                let mut values = Vec::with_capacity(batch.len());
                let mut versions = Vec::with_capacity(batch.len());
                let mut changed = Vec::with_capacity(batch.len());
                for (key, rec) in batch {
                    if rec.version == 0 {
                        return Err(StorageError::Corrupt(key.clone()).into());
                    }
                    next += 1;
                    keys.push(key.as_str());
                    values.push(rec.value.as_slice());
                    versions.push(to_i64("version", rec.version)?);
                    changed.push(next);
                }
                tx.execute(&stmt, &[&keys, &values, &versions, &changed])
                    .await?;
            }
            tx.execute("UPDATE kms_clock SET seq = $1 WHERE id = 1", &[&next])
                .await?;
            tx.execute("SELECT pg_notify('kms_changes', '')", &[])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn change_seq(&self) -> Result<u64, StorageError> {
        self.current_seq().await
    }

    async fn changes_since(&self, seq: u64) -> Result<Changes, StorageError> {
        self.changes_after(seq).await
    }

    async fn changed(&self) {
        self.inner.notify.notified().await
    }

    async fn lock(&self, names: &[String]) -> Result<LockGuard, StorageError> {
        self.lock_names(names).await
    }

    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, StorageError> {
        self.try_lock_name(name).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio_postgres::NoTls;

    pub(super) fn parse(text: &str) -> Result<PostgresConfig, String> {
        let cfg: PostgresConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// With nothing listening, `connect` fails at once with `Io` naming the server as
    /// unreachable (and never the password).
    #[tokio::test]
    async fn an_unreachable_database_is_refused_at_connect() {
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = parse(&format!(
            "url = \"postgresql://kms:hunter2-secret@127.0.0.1:{port}/kms\"\n\
             tls = \"disable\"\nconnect_timeout_secs = 2\n"
        ))
        .unwrap();
        let started = std::time::Instant::now();
        let e = PostgresBackend::connect(&cfg).await.err().unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        let text = e.to_string();
        assert!(matches!(e, StorageError::Io(_)), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{port} is unreachable")),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    // ---- against a real server (KMS_TEST_POSTGRES_URL) ------------------------------------
    //
    // These run when KMS_TEST_POSTGRES_URL names a PostgreSQL server where the user may create
    // databases (e.g. "host=127.0.0.1 port=55432 user=postgres"); each test makes a database
    // of its own. The conformance suite (tests/tests/backend_conformance.rs) starts its own
    // server and runs everywhere.

    /// A fresh database on the test server, and a config for it; None (after saying so) when
    /// no server is configured.
    pub(super) async fn fresh() -> Option<PostgresConfig> {
        let Ok(base) = std::env::var("KMS_TEST_POSTGRES_URL") else {
            eprintln!("KMS_TEST_POSTGRES_URL not set: skipped");
            return None;
        };
        let (client, conn) = tokio_postgres::connect(&base, NoTls).await.unwrap();
        tokio::spawn(conn);
        let db = format!(
            "kms_unit_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = format!("{base} dbname={db}");
        Some(
            parse(&format!(
                "url = \"{url}\"\ntls = \"disable\"\npool_size = 4\n"
            ))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn put_get_cas_delete_list_in_byte_order() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        assert_eq!(b.get("a").await.unwrap(), None);
        assert_eq!(b.put("a", b"1".to_vec(), Expect::Absent).await.unwrap(), 1);
        assert!(matches!(
            b.put("a", b"x".to_vec(), Expect::Absent).await,
            Err(StorageError::Conflict { found: 1, .. })
        ));
        assert!(matches!(
            b.put("a", b"x".to_vec(), Expect::Version(7)).await,
            Err(StorageError::Conflict { found: 1, .. })
        ));
        assert!(matches!(
            b.put("new", b"x".to_vec(), Expect::Version(1)).await,
            Err(StorageError::Conflict { found: 0, .. })
        ));
        assert_eq!(
            b.put("a", b"2".to_vec(), Expect::Version(1)).await.unwrap(),
            2
        );
        assert_eq!(b.get("a").await.unwrap().unwrap().value, b"2");
        for k in ["ab", "B", "z", "\u{e9}", "a%", "a_"] {
            b.put(k, Vec::new(), Expect::Any).await.unwrap();
        }
        // Byte order (COLLATE "C"), and a prefix is not a LIKE pattern.
        assert_eq!(
            b.list("").await.unwrap(),
            ["B", "a", "a%", "a_", "ab", "z", "\u{e9}"]
        );
        assert_eq!(b.list("a").await.unwrap(), ["a", "a%", "a_", "ab"]);
        assert_eq!(b.list("a%").await.unwrap(), ["a%"]);
        assert!(b.delete("a", Expect::Version(1)).await.is_err());
        b.delete("a", Expect::Version(2)).await.unwrap();
        assert_eq!(b.get("a").await.unwrap(), None);
        b.delete("missing", Expect::Any).await.unwrap();
        assert!(b.delete("missing", Expect::Version(1)).await.is_err());
        // A version survives a new connection (another node, or a restart).
        let again = PostgresBackend::connect(&cfg).await.unwrap();
        assert_eq!(again.get("ab").await.unwrap().unwrap().version, 1);
        assert_eq!(b.name(), "postgres");
        assert!(b.shared());
    }

    /// `restore` keeps versions and refuses a store that holds anything.
    #[tokio::test]
    async fn restore_keeps_versions_and_refuses_a_non_empty_store() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let records = vec![
            (
                "a".to_string(),
                Versioned {
                    version: 7,
                    value: b"x".to_vec(),
                },
            ),
            (
                "b/c".to_string(),
                Versioned {
                    version: 1,
                    value: Vec::new(),
                },
            ),
        ];
        b.restore(records.clone()).await.unwrap();
        assert_eq!(b.snapshot().await.unwrap(), records);
        assert_eq!(
            b.put("a", b"y".to_vec(), Expect::Version(7)).await.unwrap(),
            8
        );
        let e = b.restore(records).await.unwrap_err();
        assert!(matches!(e, StorageError::NotEmpty(_)), "{e}");
        assert_eq!(b.get("a").await.unwrap().unwrap().version, 8);
    }

    /// `kms-server restore` into an empty PostgreSQL database writes every record at its
    /// version; into one that holds records it writes nothing and says so.
    #[tokio::test]
    async fn kms_server_restore_into_postgres() {
        let Some(cfg) = fresh().await else { return };
        let records: Vec<(String, Versioned)> = (0..300)
            .map(|i| {
                let v = Versioned {
                    version: 1 + i % 5,
                    value: vec![i as u8; 100],
                };
                (format!("r/{i:04}"), v)
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::backup::send(records.clone(), tx));
        let mut file = Vec::new();
        while let Some(chunk) = rx.recv().await {
            file.extend_from_slice(&chunk.unwrap().data);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backup.kmsbak"), &file).unwrap();
        let config = dir.path().join("kms.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"p\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n\
                 client_ca = \"ca\"\n[storage]\nbackend = \"postgres\"\nurl = \"{}\"\n\
                 tls = \"disable\"\n",
                cfg.url
            ),
        )
        .unwrap();
        let done = crate::backup::restore(&config, &dir.path().join("backup.kmsbak"))
            .await
            .unwrap();
        assert_eq!(done.records, 300);
        assert!(
            done.storage
                .display()
                .to_string()
                .starts_with("PostgreSQL at 127.0.0.1")
        );
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        assert_eq!(b.snapshot().await.unwrap(), records);
        assert_eq!(b.change_seq().await.unwrap(), 300);
        let e = crate::backup::restore(&config, &dir.path().join("backup.kmsbak"))
            .await
            .unwrap_err();
        assert!(e.contains("already holds 300 records"), "{e}");
    }
}
