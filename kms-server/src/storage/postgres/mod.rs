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

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Backend, Changes, Expect, LockGuard, StorageError, Versioned};

/// The schema version this binary writes and understands.
const SCHEMA_VERSION: i32 = 1;
/// The advisory lock (two-key form, a namespace apart from the one-key locks of
/// [`Backend::lock`]) that serialises schema creation and migration between nodes starting
/// together.
const SCHEMA_LOCK: (i32, i32) = (0x006b_6d73, 1);
/// Most keys one [`Backend::changes_since`] call returns.
const CHANGES_LIMIT: i64 = 5000;
/// Records per INSERT statement of a restore.
const RESTORE_BATCH: usize = 1000;
/// Longest a snapshot (a backup's copy of every record) may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Fewest connections of the lock pool: a node holds its name's lock while it runs, and the
/// scheduler holds its job lock while it takes a key's lock, with room left for key changes.
const MIN_LOCK_CONNECTIONS: usize = 4;
/// Longest wait for a lock connection when all are taken (by holders and waiters).
const LOCK_CONNECTION_WAIT: Duration = Duration::from_secs(30);
/// Longest a cancel request may take (best effort).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two reconnection attempts of the change listener.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

const SCHEMA_V1: &str = r#"
CREATE TABLE kms_records (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    changed bigint NOT NULL
);
CREATE INDEX kms_records_changed ON kms_records (changed);
CREATE TABLE kms_clock (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);
INSERT INTO kms_clock (id, seq) VALUES (1, 0);
"#;

/// Increments the change sequence. It runs first in every write transaction: its row lock
/// serialises writers until they commit (see the module documentation). The NOTIFY is sent at
/// commit only, so a rolled-back write notifies no one.
const BUMP_CLOCK: &str =
    "UPDATE kms_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq, pg_notify('kms_changes', '')";
const READ_FOR_UPDATE: &str = "SELECT version FROM kms_records WHERE key = $1 FOR UPDATE";
const UPSERT: &str = "INSERT INTO kms_records (key, value, version, changed) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version, \
     changed = EXCLUDED.changed";
const DELETE: &str = "DELETE FROM kms_records WHERE key = $1";
const GET: &str = "SELECT value, version FROM kms_records WHERE key = $1";
const LIST: &str = "SELECT key FROM kms_records WHERE starts_with(key, $1) ORDER BY key";
const CLOCK: &str = "SELECT seq FROM kms_clock WHERE id = 1";
const CHANGES: &str =
    "SELECT key, changed FROM kms_records WHERE changed > $1 ORDER BY changed LIMIT $2";
const LOCK: &str = "SELECT pg_advisory_lock(hashtextextended($1, 0))";
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK_ALL: &str = "SELECT pg_advisory_unlock_all()";

/// How the connections to PostgreSQL are protected (`tls` in `[storage]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresTls {
    /// TLS 1.3 required; the server's certificate must chain to `ca` and name the host of
    /// `url` (like libpq's `sslmode=verify-full`).
    #[default]
    VerifyFull,
    /// No TLS: for a database on the loopback interface or a Unix socket only.
    Disable,
}

/// The `[storage]` section with `backend = "postgres"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq key=value string or `postgresql://` URI. May hold a password, so it is never
    /// logged whole (only host, port and database name are).
    pub url: String,
    /// A file holding the password (read at start, surrounding whitespace trimmed); it
    /// overrides a password in `url`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `"verify-full"` (default) or `"disable"`. Overrides any `sslmode` in `url`.
    #[serde(default)]
    pub tls: PostgresTls,
    /// CA certificate(s) (PEM) that PostgreSQL's certificate must chain to; required with
    /// `tls = "verify-full"`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Optional client certificate chain and key (PEM), for PostgreSQL's `cert` auth (mTLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Connections for reads and writes (default 16); locks use half as many more (at least 4).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection, and the bound on a call when PostgreSQL is unreachable
    /// (default 5 s).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// How stale a node's cache may be before it stops serving (100..=60000 ms, default 1000).
    /// Used by the keystore; see [`PostgresConfig::max_staleness`].
    #[serde(default = "default_max_staleness")]
    pub max_staleness_ms: u64,
}

fn default_pool_size() -> usize {
    16
}

fn default_connect_timeout() -> u64 {
    5
}

fn default_max_staleness() -> u64 {
    1000
}

impl fmt::Debug for PostgresConfig {
    /// Never prints `url` (it may hold a password): only where it points.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("target", &self.target())
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("max_staleness_ms", &self.max_staleness_ms)
            .finish()
    }
}

impl PostgresConfig {
    /// How stale a node's view of the store may be before it stops serving.
    pub fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.max_staleness_ms)
    }

    /// The bound on waiting for a connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Resolves the relative paths (against the config file's folder).
    pub(crate) fn resolve(&mut self, resolve: impl Fn(&mut PathBuf)) {
        for p in [
            &mut self.password_file,
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
    }

    /// `host:port/dbname` of `url`, for messages (never the password), or a placeholder when
    /// `url` does not parse.
    pub fn target(&self) -> String {
        match tokio_postgres::Config::from_str(&self.url) {
            Ok(pg) => describe(&pg, true),
            Err(_) => "(unparsable url)".into(),
        }
    }

    /// Checks the settings: bounds, `url` syntax, TLS files named where needed. Errors name the
    /// field (never the url's text).
    pub fn check(&self) -> Result<(), String> {
        let pg = tokio_postgres::Config::from_str(&self.url).map_err(|e| {
            format!(
                "[storage] url is not a valid PostgreSQL connection string or URI: {}",
                with_causes(&e)
            )
        })?;
        if pg.get_hosts().is_empty() {
            return Err("[storage] url names no host (host=... or postgresql://HOST/...)".into());
        }
        let bounds = [
            ("pool_size", self.pool_size as u64, 1, 1000),
            ("connect_timeout_secs", self.connect_timeout_secs, 1, 300),
            ("max_staleness_ms", self.max_staleness_ms, 100, 60_000),
        ];
        for (name, value, min, max) in bounds {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "[storage] {name} = {value} is out of range: it must be {min}..={max}"
                ));
            }
        }
        match self.tls {
            PostgresTls::VerifyFull => {
                if self.ca.is_none() {
                    return Err(
                        "[storage] tls = \"verify-full\" needs ca = the PEM file of the CA \
                         that signed PostgreSQL's certificate (or tls = \"disable\" for a \
                         database on the loopback interface)"
                            .into(),
                    );
                }
                if self.cert.is_some() != self.key.is_some() {
                    return Err(
                        "[storage] cert and key go together (the client certificate and its key)"
                            .into(),
                    );
                }
                if pg.get_hosts().iter().any(|h| matches!(h, Host::Unix(_))) {
                    return Err(
                        "[storage] tls = \"verify-full\" needs a host name or address in \
                         url, not a Unix socket folder (use tls = \"disable\" for a Unix socket)"
                            .into(),
                    );
                }
            }
            PostgresTls::Disable => {
                if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
                    return Err("[storage] ca, cert and key are used only with tls = \
                         \"verify-full\"; remove them or enable TLS"
                        .into());
                }
            }
        }
        Ok(())
    }

    /// The tokio-postgres configuration: `url`, then the password file, timeouts, keepalives
    /// (so a silently dead peer is noticed) and the TLS mode.
    fn pg_config(&self) -> Result<tokio_postgres::Config, StorageError> {
        let mut pg = tokio_postgres::Config::from_str(&self.url).map_err(|e| {
            StorageError::Io(format!("[storage] url is not a valid PostgreSQL url: {e}"))
        })?;
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                StorageError::Io(format!(
                    "cannot read the PostgreSQL password file {}: {e}",
                    path.display()
                ))
            })?;
            let password = text.trim();
            if password.is_empty() {
                return Err(StorageError::Io(format!(
                    "the PostgreSQL password file {} is empty",
                    path.display()
                )));
            }
            pg.password(password);
        }
        let timeout = self.connect_timeout();
        pg.connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            // Data unacknowledged this long means the peer is gone (a cut network), even
            // in the middle of a query.
            .tcp_user_timeout(timeout.saturating_mul(2).max(Duration::from_secs(10)))
            .application_name("kms-server")
            .ssl_mode(match self.tls {
                PostgresTls::VerifyFull => SslMode::Require,
                PostgresTls::Disable => SslMode::Disable,
            });
        Ok(pg)
    }

    /// The TLS connector: rustls (ring provider, TLS 1.3) with `ca` as the only trust anchor.
    fn connector(&self) -> Result<Connector, StorageError> {
        let ca = match (self.tls, &self.ca) {
            (PostgresTls::Disable, _) => return Ok(Connector::Plain),
            (PostgresTls::VerifyFull, Some(ca)) => ca,
            (PostgresTls::VerifyFull, None) => {
                return Err(StorageError::Io(
                    "[storage] tls = \"verify-full\" needs ca".into(),
                ));
            }
        };
        let bad = |what: &str, path: &PathBuf, e: &dyn fmt::Display| {
            StorageError::Io(format!("PostgreSQL TLS {what} {}: {e}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("CA", ca, &e))? {
            let c = c.map_err(|e| bad("CA", ca, &e))?;
            roots.add(c).map_err(|e| bad("CA", ca, &e))?;
        }
        if roots.is_empty() {
            return Err(bad("CA", ca, &"no certificate found"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| StorageError::Io(format!("PostgreSQL TLS configuration: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("client certificate", cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", cert, &e))?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad("client key", key, &e))?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| bad("client certificate and key", cert, &e))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Connector::Rustls(MakeRustlsConnect::new(config)))
    }
}

/// `host:port[/dbname]` of the first host (the one a message is about), never credentials.
fn describe(pg: &tokio_postgres::Config, with_db: bool) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let more = if pg.get_hosts().len() > 1 {
        " (and other hosts)"
    } else {
        ""
    };
    match (with_db, pg.get_dbname()) {
        (true, Some(db)) => format!("{host}:{port}/{db}{more}"),
        _ => format!("{host}:{port}{more}"),
    }
}

/// The TLS connector in use (tokio-postgres is generic over it).
#[derive(Clone)]
enum Connector {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// A failure inside an operation, mapped to a [`StorageError`] naming the server once.
enum Fail {
    Pg(tokio_postgres::Error),
    Storage(StorageError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

/// Every failure to reach or query PostgreSQL is `Io` (gRPC UNAVAILABLE): the write may or may
/// not have happened, and the caller may retry.
fn pg_err(target: &str, e: &tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        Some(db) => StorageError::Io(format!("PostgreSQL at {target} answered: {db}")),
        None => StorageError::Io(format!(
            "PostgreSQL at {target} is unreachable: {}",
            with_causes(e)
        )),
    }
}

/// `e` and its chain of causes ("error connecting to server: Connection refused"): the
/// driver's own text says only what it was doing.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn pool_err(target: &str, timeout: Duration, e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(target, &e),
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Io(format!(
            "PostgreSQL at {target} is unreachable (or every connection is busy): no \
             connection within {} s",
            timeout.as_secs()
        )),
        other => StorageError::Io(format!("PostgreSQL at {target} is unreachable: {other}")),
    }
}

/// A stored bigint that must be a positive count (a version or a sequence number).
fn to_u64(key: &str, v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(key.to_string()))
}

fn to_i64(what: &str, v: u64) -> Result<i64, StorageError> {
    i64::try_from(v)
        .map_err(|_| StorageError::Io(format!("{what} {v} is too large for PostgreSQL")))
}

fn check(key: &str, expect: Expect, found: Option<u64>) -> Result<(), StorageError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::Conflict {
            key: key.to_string(),
            expected: expect,
            found: found.unwrap_or(0),
        })
    }
}

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

    async fn conn(&self) -> Result<Object, StorageError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| pool_err(&self.inner.target, self.inner.connect_timeout, e))
    }

    /// Runs `op` (already holding `conn`) within `limit`. On a timeout, a broken connection or
    /// a call dropped half-way (the caller gave up), the connection is discarded rather than
    /// handed out again: its session may be stuck or inside a transaction, and closing it
    /// makes PostgreSQL roll back whatever it had not committed. After a timeout the outcome
    /// is unknown: `Io`.
    async fn run<T>(
        &self,
        conn: Object,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let mut out = Checkout(Some(conn), &self.inner.connector);
        let Some(c) = out.0.as_mut() else {
            return Err(StorageError::Io("connection lost".into()));
        };
        let r = tokio::time::timeout(limit, op(c)).await;
        let target = &self.inner.target;
        match r {
            Ok(Ok(v)) => {
                out.release();
                Ok(v)
            }
            Ok(Err(Fail::Storage(e))) => {
                out.release();
                Err(e)
            }
            Ok(Err(Fail::Pg(e))) => {
                // An error PostgreSQL answered leaves a usable session; any other means the
                // connection broke (dropped with `out`).
                if e.as_db_error().is_some() {
                    out.release();
                }
                Err(pg_err(target, &e))
            }
            Err(_) => Err(StorageError::Io(format!(
                "PostgreSQL at {target} did not answer within {} s (whether the last write \
                 happened is unknown)",
                limit.as_secs()
            ))),
        }
    }
}

impl PostgresBackend {
    /// Runs a write on the session that holds `lock`, so that it fails if the lock was lost
    /// with its session. A timeout or a broken session discards the session (the lock goes
    /// with it; later fenced writes fail too).
    async fn on_lock_session<T>(
        &self,
        lock: &LockGuard,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let target = &self.inner.target;
        let lost = || {
            StorageError::Io(format!(
                "the cluster lock's session with PostgreSQL at {target} has ended, and the lock \
                 with it: the write was not made; retry"
            ))
        };
        let Some(held) = lock.downcast_ref::<PgLock>() else {
            return Err(StorageError::Io(
                "a write fenced by a lock of another storage backend".into(),
            ));
        };
        let mut slot = held.conn.lock().await;
        let Some(conn) = slot.as_mut() else {
            return Err(lost());
        };
        if conn.is_closed() {
            if let Some(conn) = slot.take() {
                discard(conn, &self.inner.connector);
            }
            return Err(lost());
        }
        let limit = self.inner.op_timeout;
        match tokio::time::timeout(limit, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Storage(e))) => Err(e),
            Ok(Err(Fail::Pg(e))) => {
                if e.as_db_error().is_none() || conn.is_closed() {
                    if let Some(conn) = slot.take() {
                        discard(conn, &self.inner.connector);
                    }
                    let StorageError::Io(why) = pg_err(target, &e) else {
                        return Err(lost());
                    };
                    return Err(StorageError::Io(format!(
                        "{why} (the cluster lock is lost)"
                    )));
                }
                Err(pg_err(target, &e))
            }
            Err(_) => {
                if let Some(conn) = slot.take() {
                    discard(conn, &self.inner.connector);
                }
                Err(StorageError::Io(format!(
                    "PostgreSQL at {target} did not answer within {} s (whether the write \
                     happened is unknown; the cluster lock is given up)",
                    limit.as_secs()
                )))
            }
        }
    }
}

/// A pooled connection in use: discarded (see [`discard`]) when dropped, unless released back
/// to the pool.
struct Checkout<'a>(Option<Object>, &'a Connector);

impl Checkout<'_> {
    fn release(mut self) {
        // Dropping an `Object` returns it to its pool.
        drop(self.0.take());
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn, self.1);
        }
    }
}

/// `pg` with `options` (server settings for the session) added to any it has.
fn with_options(pg: &tokio_postgres::Config, options: &str) -> tokio_postgres::Config {
    let mut pg = pg.clone();
    let all = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {options}"),
        _ => options.to_string(),
    };
    pg.options(all);
    pg
}

/// Opens one connection outside the pools (schema set-up), driven by a task of its own.
async fn connect_one(
    pg: &tokio_postgres::Config,
    connector: &Connector,
    timeout: Duration,
    target: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StorageError> {
    async fn go<T>(
        pg: &tokio_postgres::Config,
        tls: T,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = pg.connect(tls).await?;
        let task = tokio::spawn(async move {
            // The error, if any, reaches the caller through its next query.
            let _ = connection.await;
        });
        Ok((client, task))
    }
    let attempt = async {
        match connector {
            Connector::Plain => go(pg, NoTls).await,
            Connector::Rustls(t) => go(pg, t.clone()).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(pg_err(target, &e)),
        Err(_) => Err(StorageError::Io(format!(
            "PostgreSQL at {target} is unreachable: no connection within {} s",
            timeout.as_secs()
        ))),
    }
}

fn build_pool(
    pg: &tokio_postgres::Config,
    connector: &Connector,
    size: usize,
    wait: Option<Duration>,
    timeout: Duration,
) -> Result<Pool, StorageError> {
    // Fast recycling: a connection whose session ended (a PostgreSQL restart) is seen as
    // closed and replaced; a broken one is discarded by `run` on its first error.
    let mc = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match connector {
        Connector::Plain => Manager::from_config(pg.clone(), NoTls, mc),
        Connector::Rustls(t) => Manager::from_config(pg.clone(), t.clone(), mc),
    };
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| StorageError::Io(format!("PostgreSQL connection pool: {e}")))
}

/// Warns loudly when the server may lose acknowledged writes. Returns whether our sessions
/// must set `synchronous_commit = on` themselves (the server's default is off).
async fn check_settings(
    client: &tokio_postgres::Client,
    target: &str,
) -> Result<bool, StorageError> {
    let show = async |name: &str| -> Result<String, StorageError> {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| pg_err(target, &e))?;
        row.try_get::<_, String>(0).map_err(|e| pg_err(target, &e))
    };
    if show("fsync").await? != "on" {
        tracing::error!(
            "PostgreSQL at {target} runs with fsync = off: a crash of its machine can lose \
             keys and changes this KMS acknowledged. Set fsync = on in postgresql.conf"
        );
    }
    let sync = show("synchronous_commit").await?;
    if sync == "off" {
        tracing::warn!(
            "PostgreSQL at {target} has synchronous_commit = off: this server sets it on for \
             its own sessions, so its acknowledged writes stay durable; set it on in \
             postgresql.conf (or for the role) to stop this warning"
        );
        return Ok(true);
    }
    Ok(false)
}

/// Creates the schema in an empty database, or checks that its version is one this binary
/// knows, under an advisory lock so that nodes starting together do it once.
async fn migrate(client: &tokio_postgres::Client, target: &str) -> Result<(), StorageError> {
    let e = |e: tokio_postgres::Error| pg_err(target, &e);
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
        )
        .await
        .map_err(e)?;
    let r = migrate_locked(client, target).await;
    // Also released when the set-up connection closes, right after.
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
        )
        .await;
    r
}

async fn migrate_locked(client: &tokio_postgres::Client, target: &str) -> Result<(), StorageError> {
    let e = |e: tokio_postgres::Error| pg_err(target, &e);
    client.batch_execute("BEGIN").await.map_err(e)?;
    let r = async {
        // Looked up rather than CREATE ... IF NOT EXISTS, which needs the CREATE privilege
        // even when the table exists.
        let exists: bool = client
            .query_one("SELECT to_regclass('kms_schema') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        let version: Option<i32> = if exists {
            client
                .query_opt("SELECT version FROM kms_schema WHERE id = 1", &[])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
        } else {
            None
        };
        Ok::<_, tokio_postgres::Error>(version)
    }
    .await;
    let version = match r {
        Ok(v) => v,
        Err(err) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e(err));
        }
    };
    match version {
        Some(SCHEMA_VERSION) => {
            client.batch_execute("COMMIT").await.map_err(e)?;
            Ok(())
        }
        Some(v) if v > SCHEMA_VERSION => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StorageError::Io(format!(
                "the database at {target} has schema version {v}, newer than this kms-server \
                 knows ({SCHEMA_VERSION}): a newer kms-server has migrated it. Run that newer \
                 version on every node (nodes are never downgraded once migrated)"
            )))
        }
        Some(v) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StorageError::Io(format!(
                "the database at {target} has schema version {v}, which no kms-server wrote: \
                 is kms_schema from another program?"
            )))
        }
        None => {
            let create = async {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS kms_schema \
                         (id int PRIMARY KEY CHECK (id = 1), version int NOT NULL)",
                    )
                    .await?;
                client.batch_execute(SCHEMA_V1).await?;
                client
                    .execute(
                        "INSERT INTO kms_schema (id, version) VALUES (1, $1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            };
            match create.await {
                Ok(()) => {
                    tracing::info!("created the KMS schema (version {SCHEMA_VERSION}) at {target}");
                    Ok(())
                }
                Err(err) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    let hint = if err.code()
                        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    {
                        ": the role needs CREATE on the database's schema (e.g. own the database)"
                    } else {
                        ""
                    };
                    Err(StorageError::Io(format!(
                        "cannot create the KMS schema at {target}: {}{hint}",
                        err.as_db_error()
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| with_causes(&err))
                    )))
                }
            }
        }
    }
}

/// Keeps a connection with `LISTEN kms_changes` open for ever, waking `notify` on every
/// notification and after every (re)connection (changes may have been missed meanwhile).
async fn listen_forever(
    pg: tokio_postgres::Config,
    connector: Connector,
    notify: Arc<Notify>,
    target: String,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    // Whether the last attempt was listening: a lost connection is logged once per outage.
    let mut up = true;
    loop {
        let mut listening = false;
        let r = match &connector {
            Connector::Plain => listen_once(&pg, NoTls, &notify, timeout, &mut listening).await,
            Connector::Rustls(t) => {
                listen_once(&pg, t.clone(), &notify, timeout, &mut listening).await
            }
        };
        if listening {
            backoff = Duration::from_millis(50);
            if !up {
                tracing::info!("change listener: PostgreSQL at {target} is reachable again");
            }
            up = true;
        }
        if up {
            let why = match r {
                Ok(()) => "the connection closed".to_string(),
                Err(e) => e,
            };
            tracing::warn!(
                "change listener: lost PostgreSQL at {target} ({why}); reconnecting every \
                 second at most, other nodes' changes are seen only by the periodic check \
                 meanwhile"
            );
            up = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Wakes the current waiters, and the next caller of `changed` too (a change committed
/// between two calls is not missed).
fn wake(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

/// One listening connection, until it ends. Sets `listening` once `LISTEN` succeeded.
async fn listen_once<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    notify: &Notify,
    timeout: Duration,
    listening: &mut bool,
) -> Result<(), String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = match tokio::time::timeout(timeout, pg.connect(tls)).await {
        Ok(r) => r.map_err(|e| with_causes(&e))?,
        Err(_) => return Err(format!("no connection within {} s", timeout.as_secs())),
    };
    let listen = client.batch_execute("LISTEN kms_changes");
    tokio::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen, if !*listening => {
                r.map_err(|e| with_causes(&e))?;
                *listening = true;
                wake(notify);
            }
            // The connection is driven here (not in a task of its own) so its notifications
            // come to us.
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(_))) => wake(notify),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(with_causes(&e)),
                None => return Ok(()),
            }
        }
    }
}

/// The first steps of every write, in its transaction: bump the clock FIRST (its row lock makes
/// writers commit in sequence order), read the record's version for update, and check
/// `expect`. Returns the write's sequence number and the version found, or rolls back and
/// fails with the conflict.
async fn begin_write(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &str,
    expect: Expect,
) -> Result<(i64, Option<u64>), Fail> {
    let seq: i64 = tx
        .query_one(&tx.prepare_cached(BUMP_CLOCK).await?, &[])
        .await?
        .try_get(0)?;
    let found = match tx
        .query_opt(&tx.prepare_cached(READ_FOR_UPDATE).await?, &[&key])
        .await?
    {
        Some(row) => Some(to_u64(key, row.try_get(0)?)?),
        None => None,
    };
    check(key, expect, found)?;
    Ok((seq, found))
}

/// One `put` in one transaction (see the module documentation for the order of its steps).
async fn put_tx(c: &mut Object, key: &str, value: &[u8], expect: Expect) -> Result<u64, Fail> {
    let tx = c.transaction().await?;
    // A failed check drops `tx`, which rolls it back.
    let (seq, found) = begin_write(&tx, key, expect).await?;
    let version = found.unwrap_or(0) + 1;
    let v = to_i64("version", version)?;
    tx.execute(&tx.prepare_cached(UPSERT).await?, &[&key, &value, &v, &seq])
        .await?;
    tx.commit().await?;
    Ok(version)
}

/// One `delete` in one transaction, ordered like [`put_tx`].
async fn delete_tx(c: &mut Object, key: &str, expect: Expect) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    let (_, found) = begin_write(&tx, key, expect).await?;
    if found.is_none() {
        // Nothing to delete: nothing to commit either.
        tx.rollback().await?;
        return Ok(());
    }
    tx.execute(&tx.prepare_cached(DELETE).await?, &[&key])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Closes a connection whose session may still be busy (a statement waiting for a lock):
/// PostgreSQL would keep such a session, outside any pool, until the statement ends, so a
/// cancel request (on a connection of its own) is sent first when a runtime is at hand. The
/// session's uncommitted work is rolled back.
fn discard(conn: Object, connector: &Connector) {
    let token = conn.cancel_token();
    drop(Object::take(conn));
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let connector = connector.clone();
    rt.spawn(async move {
        let cancel = async {
            match connector {
                Connector::Plain => token.cancel_query(NoTls).await,
                Connector::Rustls(t) => token.cancel_query(t).await,
            }
        };
        // Best effort: statement_timeout (main pool) and the closed socket end it anyway.
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel).await;
    });
}

/// Session advisory locks held on one connection of the lock pool. Dropping it unlocks them
/// in a spawned task and returns the connection, or discards the connection (which ends the
/// session, and so releases its locks) if unlocking fails or the locks were not all taken.
///
/// Writes fenced by the lock (`put_locked`, `delete_locked`) run on this same session, so they
/// fail once the session, and with it the lock, is gone.
struct PgLock {
    conn: tokio::sync::Mutex<Option<Object>>,
    connector: Connector,
    /// All asked-for locks are held and no lock query is in flight.
    complete: bool,
    timeout: Duration,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.get_mut().take() else {
            return;
        };
        // An acquisition cut short may still have a lock query waiting in the session: only
        // cancelling it and ending the session is sure to leave nothing held or queued.
        let runtime = tokio::runtime::Handle::try_current();
        match (self.complete, runtime) {
            (true, Ok(rt)) => {
                let timeout = self.timeout;
                let connector = self.connector.clone();
                rt.spawn(async move {
                    match tokio::time::timeout(timeout, conn.execute(UNLOCK_ALL, &[])).await {
                        Ok(Ok(_)) => drop(conn),
                        _ => discard(conn, &connector),
                    }
                });
            }
            _ => discard(conn, &self.connector),
        }
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
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            let seq: i64 = c
                .query_one(&c.prepare_cached(CLOCK).await?, &[])
                .await?
                .try_get(0)?;
            Ok(to_u64("kms_clock", seq)?)
        })
        .await
    }

    async fn changes_since(&self, seq: u64) -> Result<Changes, StorageError> {
        let from = to_i64("sequence position", seq)?;
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            // The clock first: every change numbered up to it is committed (writers commit in
            // sequence order), so the query below, run after, sees them all.
            let now: i64 = c
                .query_one(&c.prepare_cached(CLOCK).await?, &[])
                .await?
                .try_get(0)?;
            let rows = c
                .query(&c.prepare_cached(CHANGES).await?, &[&from, &CHANGES_LIMIT])
                .await?;
            let mut keys = Vec::with_capacity(rows.len());
            let mut last = from;
            for row in &rows {
                keys.push(row.try_get::<_, String>(0)?);
                last = row.try_get(1)?;
            }
            // A full page: go on from its last change; otherwise everything up to the clock
            // has been seen. Changes past it may be listed again next time (harmless).
            let reached = if rows.len() as i64 >= CHANGES_LIMIT {
                last
            } else {
                now.max(from)
            };
            Ok(Changes {
                seq: to_u64("kms_clock", reached)?,
                keys,
            })
        })
        .await
    }

    async fn changed(&self) {
        self.inner.notify.notified().await
    }

    async fn lock(&self, names: &[String]) -> Result<LockGuard, StorageError> {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.dedup();
        let target = &self.inner.target;
        let conn = self.inner.lock_pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => StorageError::Io(format!(
                "every connection for cluster locks to PostgreSQL at {target} stayed busy \
                     for {} s (other callers waiting for locks)",
                LOCK_CONNECTION_WAIT
                    .max(self.inner.connect_timeout)
                    .as_secs()
            )),
            e => pool_err(target, self.inner.connect_timeout, e),
        })?;
        // Built before the first lock query: if this future is dropped while waiting, the
        // guard discards the session and nothing stays locked.
        let mut guard = PgLock {
            conn: tokio::sync::Mutex::new(Some(conn)),
            connector: self.inner.connector.clone(),
            complete: false,
            timeout: self.inner.op_timeout,
        };
        for name in sorted {
            let Some(conn) = guard.conn.get_mut().as_ref() else {
                return Err(StorageError::Io("lock connection lost".into()));
            };
            // No time bound: a lock is waited for as long as its holder holds it. A dead
            // database ends the wait with an error (keepalives, tcp_user_timeout).
            let stmt = conn
                .prepare_cached(LOCK)
                .await
                .map_err(|e| pg_err(target, &e))?;
            conn.execute(&stmt, &[name])
                .await
                .map_err(|e| pg_err(target, &e))?;
        }
        guard.complete = true;
        Ok(LockGuard::new(guard))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, StorageError> {
        let target = &self.inner.target;
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(self.inner.connect_timeout),
            create: Some(self.inner.connect_timeout),
            recycle: Some(self.inner.connect_timeout),
        };
        let conn = self
            .inner
            .lock_pool
            .timeout_get(&timeouts)
            .await
            .map_err(|e| pool_err(target, self.inner.connect_timeout, e))?;
        let mut guard = PgLock {
            conn: tokio::sync::Mutex::new(Some(conn)),
            connector: self.inner.connector.clone(),
            complete: false,
            timeout: self.inner.op_timeout,
        };
        let Some(conn) = guard.conn.get_mut().as_ref() else {
            return Err(StorageError::Io("lock connection lost".into()));
        };
        let query = async {
            let stmt = conn.prepare_cached(TRY_LOCK).await?;
            conn.query_one(&stmt, &[&name]).await?.try_get::<_, bool>(0)
        };
        let taken = match tokio::time::timeout(self.inner.op_timeout, query).await {
            Ok(r) => r.map_err(|e| pg_err(target, &e))?,
            Err(_) => {
                return Err(StorageError::Io(format!(
                    "PostgreSQL at {target} did not answer a lock request within {} s",
                    self.inner.op_timeout.as_secs()
                )));
            }
        };
        guard.complete = true;
        if taken {
            Ok(Some(LockGuard::new(guard)))
        } else {
            // Nothing held: the connection goes back to the pool as it is.
            if let Some(conn) = guard.conn.get_mut().take() {
                drop(conn);
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<PostgresConfig, String> {
        let cfg: PostgresConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Defaults, bounds, and the TLS settings that go together.
    #[test]
    fn config_defaults_and_checks() {
        let cfg = parse("url = \"host=127.0.0.1 dbname=kms\"\ntls = \"disable\"\n").unwrap();
        assert_eq!(cfg.pool_size, 16);
        assert_eq!(cfg.connect_timeout_secs, 5);
        assert_eq!(cfg.max_staleness(), Duration::from_millis(1000));
        assert_eq!(cfg.target(), "127.0.0.1:5432/kms");
        let uri =
            parse("url = \"postgresql://kms@db.example:6432/keys\"\nca = \"ca.pem\"\n").unwrap();
        assert_eq!(uri.tls, PostgresTls::VerifyFull);
        assert_eq!(uri.target(), "db.example:6432/keys");

        let refused = [
            // verify-full (the default) without a CA
            "url = \"host=db\"\n",
            "url = \"host=db\"\ntls = \"disable\"\nca = \"ca.pem\"\n",
            "url = \"host=db\"\nca = \"ca.pem\"\ncert = \"c.pem\"\n",
            "url = \"host=/run/postgresql\"\nca = \"ca.pem\"\n",
            "url = \"host=db\"\ntls = \"disable\"\nmax_staleness_ms = 99\n",
            "url = \"host=db\"\ntls = \"disable\"\nmax_staleness_ms = 60001\n",
            "url = \"host=db\"\ntls = \"disable\"\npool_size = 0\n",
            "url = \"host=db\"\ntls = \"disable\"\nconnect_timeout_secs = 0\n",
            "url = \"host=db\"\ntls = \"verify-ca\"\n",
            "url = \"host=db\"\ntls = \"disable\"\nuser = \"x\"\n",
            "url = \"nonsense=1\"\ntls = \"disable\"\n",
        ];
        for text in refused {
            assert!(parse(text).is_err(), "accepted: {text}");
        }
    }

    /// In a config file, `backend = "postgres"` selects this backend, its relative paths are
    /// resolved against the file's folder, and its checks stop the load.
    #[test]
    fn config_file_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.toml");
        let head = "listen = \"127.0.0.1:0\"\npolicies = \"p\"\n[tls]\ncert = \"c\"\n\
                    key = \"k\"\nclient_ca = \"ca\"\n[storage]\nbackend = \"postgres\"\n";
        std::fs::write(
            &path,
            format!("{head}url = \"host=db\"\nca = \"pg/ca.pem\"\npassword_file = \"pw\"\n"),
        )
        .unwrap();
        let config = crate::Config::load(&path).unwrap();
        let crate::StorageConfig::Postgres(pg) = config.storage else {
            panic!("not postgres");
        };
        assert_eq!(pg.ca.unwrap(), dir.path().join("pg/ca.pem"));
        assert_eq!(pg.password_file.unwrap(), dir.path().join("pw"));
        std::fs::write(&path, format!("{head}url = \"host=db\"\n")).unwrap();
        let e = crate::Config::load(&path).unwrap_err();
        assert!(e.contains("needs ca"), "{e}");
    }

    /// With `tls = "verify-full"` (the default) a session is never in clear: TLS is required
    /// whatever `sslmode` the url says, and the CA file must hold a certificate. (That the
    /// handshake checks the chain and the host name was checked by hand: docs/postgres.md.)
    /// [SNC 10.2.c: flows to the database are encrypted and authenticated]
    #[test]
    fn verify_full_never_falls_back_to_clear() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["db".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let cfg = parse(&format!(
            "url = \"host=db sslmode=disable\"\nca = \"{}\"\n",
            ca.display()
        ))
        .unwrap();
        assert_eq!(cfg.pg_config().unwrap().get_ssl_mode(), SslMode::Require);
        assert!(matches!(cfg.connector(), Ok(Connector::Rustls(_))));
        let plain = parse("url = \"host=127.0.0.1\"\ntls = \"disable\"\n").unwrap();
        assert_eq!(plain.pg_config().unwrap().get_ssl_mode(), SslMode::Disable);
        std::fs::write(&ca, "no certificate here\n").unwrap();
        let e = cfg.connector().err().unwrap().to_string();
        assert!(e.contains("no certificate found"), "{e}");
    }

    /// A password in `url` never shows in the configuration's debug output nor in errors.
    #[test]
    fn the_url_password_is_never_printed() {
        let cfg =
            parse("url = \"postgresql://kms:hunter2-secret@127.0.0.1:1/kms\"\ntls = \"disable\"\n")
                .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:1/kms"), "{shown}");
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
    async fn fresh() -> Option<PostgresConfig> {
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

    /// Another node's put is seen by `changes_since` in commit order, and wakes `changed`.
    #[tokio::test]
    async fn changes_reach_another_node() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let start = b.change_seq().await.unwrap();
        // The listener's first (re)connection wakes once: consume it.
        let _ = tokio::time::timeout(Duration::from_secs(2), b.changed()).await;
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.changed().await })
        };
        a.put("k/1", b"x".to_vec(), Expect::Any).await.unwrap();
        a.put("k/2", b"x".to_vec(), Expect::Any).await.unwrap();
        a.put("k/1", b"y".to_vec(), Expect::Any).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("no notification")
            .unwrap();
        let c = b.changes_since(start).await.unwrap();
        assert_eq!(c.keys, ["k/2", "k/1"]);
        assert_eq!(c.seq, b.change_seq().await.unwrap());
        assert_eq!(c.seq, start + 3);
        let none = b.changes_since(c.seq).await.unwrap();
        assert_eq!(
            none,
            Changes {
                seq: c.seq,
                keys: vec![]
            }
        );
        // A delete moves the sequence but lists nothing.
        a.delete("k/2", Expect::Any).await.unwrap();
        let d = b.changes_since(c.seq).await.unwrap();
        assert!(d.keys.is_empty() && d.seq == c.seq + 1, "{d:?}");
    }

    /// More than one page of changes: each page ends at its last change, nothing is skipped.
    #[tokio::test]
    async fn changes_are_paged() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let n = CHANGES_LIMIT as usize + 10;
        let records = (0..n)
            .map(|i| {
                let v = Versioned {
                    version: 1,
                    value: Vec::new(),
                };
                (format!("r/{i:05}"), v)
            })
            .collect::<Vec<_>>();
        b.restore(records).await.unwrap();
        let first = b.changes_since(0).await.unwrap();
        assert_eq!(first.keys.len(), CHANGES_LIMIT as usize);
        assert_eq!(first.seq, CHANGES_LIMIT as u64);
        let second = b.changes_since(first.seq).await.unwrap();
        assert_eq!(second.keys.len(), 10);
        assert_eq!(second.seq, n as u64);
        assert_eq!(b.change_seq().await.unwrap(), n as u64);
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

    /// Locks are cluster-wide: a name held by one node is not free for another until the
    /// guard drops (released by a spawned task, so waited for).
    #[tokio::test]
    async fn locks_exclude_other_nodes_until_dropped() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let g = a.lock(&["y".into(), "x".into(), "x".into()]).await.unwrap();
        assert!(b.try_lock("x").await.unwrap().is_none());
        assert!(b.try_lock("y").await.unwrap().is_none());
        let free = b.try_lock("z").await.unwrap();
        assert!(free.is_some());
        // A waiter on another node gets it once released; its wait uses no main-pool
        // connection, so the holder can still write.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.lock(&["x".into()]).await.map(drop) })
        };
        for i in 0..8 {
            a.put(&format!("w/{i}"), Vec::new(), Expect::Any)
                .await
                .unwrap();
        }
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the lock was not released")
            .unwrap()
            .unwrap();
        // A lock wait dropped half-way leaves nothing held.
        let g = a.lock(&["q".into()]).await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(200), b.lock(&["q".into()])).await;
        assert!(cut.is_err());
        drop(g);
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(g) = a.try_lock("q").await.unwrap() {
                drop(g);
                break;
            }
            assert!(std::time::Instant::now() < give_up, "q stayed locked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// A call dropped half-way (here: a put waiting for the clock's row lock, as behind a
    /// long writer of another node) leaves no session inside a transaction, writes nothing,
    /// and the backend goes on working.
    #[tokio::test]
    async fn a_call_dropped_half_way_leaves_no_open_transaction() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let (other, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        other
            .batch_execute("BEGIN; UPDATE kms_clock SET seq = seq + 1")
            .await
            .unwrap();
        let cut = tokio::time::timeout(
            Duration::from_millis(300),
            b.put("k", b"v".to_vec(), Expect::Absent),
        )
        .await;
        assert!(cut.is_err(), "the put did not wait for the clock");
        other.batch_execute("ROLLBACK").await.unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let open: i64 = other
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = \
                     'kms-server' AND datname = current_database() AND state LIKE 'idle in%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if open == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{open} sessions in a transaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(b.put("k", b"v".to_vec(), Expect::Absent).await.unwrap(), 1);
    }

    /// Writes fenced by a lock run on the lock's session: they fail (and write nothing) once
    /// that session, and so the lock, is gone, where plain writes go on; a cancelled lock wait
    /// leaves no session queued in PostgreSQL.
    #[tokio::test]
    async fn fenced_writes_fail_once_the_lock_is_lost() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let g = a.lock(&["name/x".into()]).await.unwrap();
        assert_eq!(
            a.put_locked(&g, "k", b"1".to_vec(), Expect::Absent)
                .await
                .unwrap(),
            1
        );
        a.delete_locked(&g, "k", Expect::Version(1)).await.unwrap();
        // A waiter on B gives up: its session must not stay queued for the lock.
        let cut =
            tokio::time::timeout(Duration::from_millis(200), b.lock(&["name/x".into()])).await;
        assert!(cut.is_err());
        let (admin, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let queued = async || -> i64 {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        };
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while queued().await > 0 {
            assert!(
                std::time::Instant::now() < give_up,
                "a cancelled wait stays queued"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The lock's session ends (a PostgreSQL restart, a failover, pg_terminate_backend).
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        let e = a
            .put_locked(&g, "k", b"2".to_vec(), Expect::Any)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Io(_)), "{e}");
        assert!(e.to_string().contains("lock"), "{e}");
        assert!(a.delete_locked(&g, "k", Expect::Any).await.is_err());
        assert_eq!(a.get("k").await.unwrap(), None);
        // Another node may take the lock now; plain writes still work.
        assert!(b.try_lock("name/x").await.unwrap().is_some());
        a.put("k", b"3".to_vec(), Expect::Any).await.unwrap();
        drop(g);
    }

    /// A schema newer than this binary knows stops the start, saying why.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(cfg) = fresh().await else { return };
        drop(PostgresBackend::connect(&cfg).await.unwrap());
        let (client, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("UPDATE kms_schema SET version = 99")
            .await
            .unwrap();
        let e = PostgresBackend::connect(&cfg).await.err().unwrap();
        assert!(e.to_string().contains("schema version 99, newer"), "{e}");
    }
}
