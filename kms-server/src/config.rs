//! The server configuration file (TOML). See `kms-server/config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. "127.0.0.1:8200". Port 0 picks a free port.
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    /// Directory of policy files (`*.toml`); see `policies/README.md`. Deny by default.
    pub policies: PathBuf,
    /// Limits and lifecycle settings of keys; every field has a default.
    #[serde(default)]
    pub keys: crate::keystore::KeySettings,
    /// The audit log; defaults to `audit.log` beside the config file.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Connection and request limits; every field has a default (see docs/limits.md).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus metrics listener; on by default, loopback only (see docs/metrics.md).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The `[metrics]` section: a plain-HTTP Prometheus endpoint (`GET /metrics`) on its own
/// listener. Metrics carry no secret and no key name, but they show request rates and key
/// counts: keep the listener on loopback, or behind a firewall.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve metrics at all (default true).
    pub enabled: bool,
    /// Address of the metrics listener; port 0 picks a free port. When unset, the server
    /// tries [`MetricsConfig::DEFAULT_LISTEN`] and, if that is taken, starts without metrics
    /// (a warning); when set, an address that cannot be bound stops the server.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

impl MetricsConfig {
    /// 127.0.0.1:9464, the port commonly used by Prometheus exporters of applications.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

    /// The address to bind.
    pub fn address(&self) -> SocketAddr {
        self.listen.unwrap_or(Self::DEFAULT_LISTEN)
    }
}

/// Connection and request limits (the `[limits]` section), so that no client, slow, silent or
/// hostile, can hold the server's memory, sockets or tasks without bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gRPC request message decoded, in bytes (default 4 MiB, tonic's own default made
    /// explicit). A larger message is refused with OUT_OF_RANGE before it is buffered. Must
    /// hold one Encrypt of `keys.max_plaintext_bytes` with a full context.
    pub max_message_bytes: usize,
    /// Most concurrent calls (HTTP/2 streams) on one connection (default 100, the floor RFC
    /// 9113 advises). More are refused with RST_STREAM(REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// Longest a call may run, in seconds (default 30); past it the client gets
    /// DEADLINE_EXCEEDED naming this setting (see `deadline`). A client's shorter
    /// `grpc-timeout` wins, enforced by tonic (CANCELLED "Timeout expired").
    pub request_timeout_secs: u64,
    /// Longest a client may take to complete the TLS handshake, in seconds (default 10).
    pub handshake_timeout_secs: u64,
    /// A connection from which nothing at all (not even an HTTP/2 ping answer) is read for
    /// this many seconds is closed (default 300). Must exceed `keepalive_interval_secs`, so a
    /// responsive client is never cut.
    pub idle_timeout_secs: u64,
    /// The server pings each connection after this many seconds without traffic (default 60).
    pub keepalive_interval_secs: u64,
    /// A ping not answered within this many seconds closes the connection (default 20).
    pub keepalive_timeout_secs: u64,
    /// Most open connections, TLS handshakes included (default 512). Beyond it new
    /// connections are closed at once (a warning is logged, at most every 10 s). Keep it well
    /// below the process's open-file limit (`ulimit -n`).
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 100,
            request_timeout_secs: 30,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            max_connections: 512,
        }
    }
}

impl LimitsConfig {
    /// Room for the encryption context (at most 8 KiB) and the protobuf framing of one item.
    const ITEM_OVERHEAD: usize = 16 * 1024;
    /// Upper bound of every timeout (in seconds: 30 days) and of `max_connections`.
    const MAX_BOUND: u64 = 30 * 24 * 3600;

    /// Checks the limits against each other and against the key settings.
    ///
    /// Returns an error naming the field when a limit is zero or above 2,592,000 (30 days in
    /// seconds; for `max_connections` too), when `max_message_bytes` cannot
    /// carry one maximal Encrypt, or when the idle timeout would cut a client that answers
    /// pings.
    pub fn check(&self, keys: &crate::keystore::KeySettings) -> Result<(), String> {
        // The upper bounds are far beyond any sensible value, and small enough for timer
        // arithmetic and the connection semaphore never to overflow.
        let fields = [
            ("max_message_bytes", self.max_message_bytes as u64, u64::MAX),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
                u64::MAX,
            ),
            (
                "request_timeout_secs",
                self.request_timeout_secs,
                Self::MAX_BOUND,
            ),
            (
                "handshake_timeout_secs",
                self.handshake_timeout_secs,
                Self::MAX_BOUND,
            ),
            ("idle_timeout_secs", self.idle_timeout_secs, Self::MAX_BOUND),
            (
                "keepalive_interval_secs",
                self.keepalive_interval_secs,
                Self::MAX_BOUND,
            ),
            (
                "keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                Self::MAX_BOUND,
            ),
            (
                "max_connections",
                self.max_connections as u64,
                Self::MAX_BOUND,
            ),
        ];
        for (name, value, max) in fields {
            if value == 0 {
                return Err(format!("[limits] {name} must be at least 1"));
            }
            if value > max {
                return Err(format!("[limits] {name} must be at most {max}"));
            }
        }
        let needed = keys.max_plaintext_bytes.saturating_add(Self::ITEM_OVERHEAD);
        if self.max_message_bytes < needed {
            return Err(format!(
                "[limits] max_message_bytes = {} cannot carry one Encrypt of [keys] \
                 max_plaintext_bytes = {} with its context: set it to at least {needed}",
                self.max_message_bytes, keys.max_plaintext_bytes
            ));
        }
        if self.idle_timeout_secs <= self.keepalive_interval_secs {
            return Err(format!(
                "[limits] idle_timeout_secs = {} must exceed keepalive_interval_secs = {}, or \
                 idle clients that answer pings would be cut",
                self.idle_timeout_secs, self.keepalive_interval_secs
            ));
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The JSON Lines audit log (hash-chained; see docs/audit-format.md).
    pub path: PathBuf,
    /// This node's name in every record.
    pub node: String,
    /// Rotate the log once it reaches this many bytes (0: never). Rotated files are named
    /// `<path>.<last sequence number>`; the chain continues across them.
    pub max_bytes: u64,
    /// Which calls wait for their record to be fsynced: `"state-changes"` (default: data-plane
    /// calls wait until the record is written to the OS and are fsynced by group commit within
    /// `sync_interval_ms`) or `"every-request"`.
    pub sync: crate::audit_sink::SyncPolicy,
    /// The longest a written record stays un-fsynced (1–1000 ms; default 10).
    pub sync_interval_ms: u64,
    /// Optional shipping of every record to a remote collector (JSON lines over TLS).
    pub ship: Option<crate::audit_ship::ShipConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("audit.log"),
            node: "kms-1".into(),
            max_bytes: 64 * 1024 * 1024,
            sync: Default::default(),
            sync_interval_ms: 10,
            ship: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8 / SEC1 / PKCS#1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Optional certificate revocation list(s) (PEM) of the client CA: a revoked client
    /// certificate is refused during the handshake (hard fail).
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum StorageConfig {
    /// The embedded sled database in `path`.
    Sled { path: PathBuf },
    /// A PostgreSQL database that several kms-server nodes may share (see docs/postgres.md).
    Postgres(crate::storage::PostgresConfig),
}

impl Config {
    /// Reads and checks a config file. Relative paths are resolved against the file's folder.
    /// Errors name the file and, for syntax errors, the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.tls.cert);
        resolve(&mut config.tls.key);
        resolve(&mut config.tls.client_ca);
        resolve(&mut config.policies);
        resolve(&mut config.audit.path);
        if let Some(ship) = &mut config.audit.ship {
            ship.resolve(resolve);
        }
        if let Some(crl) = &mut config.tls.crl {
            resolve(crl);
        }
        match &mut config.storage {
            StorageConfig::Sled { path } => resolve(path),
            StorageConfig::Postgres(pg) => {
                pg.resolve(resolve);
                pg.check()
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
            }
        }
        config
            .limits
            .check(&config.keys)
            .and_then(|()| config.keys.check())
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        Ok(config)
    }
}

/// A config error naming the file, line and column, without toml's quote of the line: the
/// line may hold a secret (a database password in `[storage] url`).
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|r| {
            let before = text.get(..r.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(", line {line}, column {column}")
        })
        .unwrap_or_default();
    format!(
        "config file {}{at}: {}",
        path.display(),
        e.message().trim_end()
    )
}
