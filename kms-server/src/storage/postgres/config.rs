//! The `[storage]` settings of the PostgreSQL backend, and connecting: the tokio-postgres
//! configuration, TLS (rustls), single connections and pools.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::session::{pg_err, with_causes};
use crate::storage::StorageError;

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
    pub(super) fn pg_config(&self) -> Result<tokio_postgres::Config, StorageError> {
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
    pub(super) fn connector(&self) -> Result<Connector, StorageError> {
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
pub(super) fn describe(pg: &tokio_postgres::Config, with_db: bool) -> String {
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
pub(super) enum Connector {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// `pg` with `options` (server settings for the session) added to any it has.
pub(super) fn with_options(pg: &tokio_postgres::Config, options: &str) -> tokio_postgres::Config {
    let mut pg = pg.clone();
    let all = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {options}"),
        _ => options.to_string(),
    };
    pg.options(all);
    pg
}

/// Opens one connection outside the pools (schema set-up), driven by a task of its own.
pub(super) async fn connect_one(
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

pub(super) fn build_pool(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::parse;
    use super::*;

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
}
