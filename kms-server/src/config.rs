//! The server configuration file (TOML). See `kms-server/config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

impl Config {
    /// Reads and checks a config file. Relative paths are resolved against the file's folder.
    /// Errors name the file and, for syntax errors, the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
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
        }
        Ok(config)
    }
}
