//! The server configuration file (TOML). See `kms-server/config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::audit::AuditConfig;
use crate::ops::metrics::MetricsConfig;
use crate::transport::LimitsConfig;

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
    /// The installation this server serves (see docs/installation-pin.md); optional.
    #[serde(default)]
    pub seal: SealSettings,
}

/// `[seal]`: what the server checks about the seal configuration it finds in storage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSettings {
    /// The installation fingerprint (`sha256:…`, printed by `kms-cli operator init`, `rekey`
    /// and `status`). When set, a store holding another installation is refused at unseal
    /// and rekey (FAILED_PRECONDITION, no share evaluated), and init is refused. A malformed
    /// value stops the start, naming the file and line.
    #[serde(default)]
    pub installation: Option<crate::seal::Fingerprint>,
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
