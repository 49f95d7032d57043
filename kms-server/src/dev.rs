//! Dev mode: a complete local KMS in one command. NOT for production: the single unseal share
//! is kept in the data directory so restarts unseal by themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;

use crate::transport::pki::{self, ClientSpec};
use crate::{Config, StorageConfig, TlsConfig};

/// The example roles of `policies/`, each with its own client certificate.
const ROLES: [&str; 4] = ["admin", "service", "auditor", "officer"];
const SHARE_FILE: &str = "dev-unseal-share";

/// The repository's example policies, written to `DATA_DIR/policies` on first run.
const EXAMPLE_POLICIES: [(&str, &str); 6] = [
    ("admin.toml", include_str!("../../policies/admin.toml")),
    ("auditor.toml", include_str!("../../policies/auditor.toml")),
    ("dev.toml", include_str!("../../policies/dev.toml")),
    ("officer.toml", include_str!("../../policies/officer.toml")),
    (
        "separation-of-duties.toml",
        include_str!("../../policies/separation-of-duties.toml"),
    ),
    ("service.toml", include_str!("../../policies/service.toml")),
];

/// Dev-mode switches for measurements (see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct Options {
    /// False: record nothing (to measure what the audit costs).
    pub audit: bool,
    pub audit_sync: crate::audit::SyncPolicy,
    /// Ship the audit log to this collector, which must present the dev server certificate.
    pub ship_to: Option<String>,
}

/// Starts dev mode in `data_dir` on `listen` and serves until SIGINT/SIGTERM.
///
/// First run: generates a dev CA, a server certificate (localhost, 127.0.0.1), a default client
/// certificate (`client.pem`, principal `spiffe://kms.dev/dev`) and one per example role, then
/// initialises with one share (1-of-1). Every run: unseals, binds, writes `DATA_DIR/env` with
/// the actual address (port 0 works) and prints it.
pub async fn run(data_dir: &Path, listen: SocketAddr, options: Options) -> Result<(), String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    let tls_dir = data_dir.join("tls");
    if !tls_dir.join("ca.pem").exists() {
        let uris: Vec<String> = ROLES
            .iter()
            .map(|r| format!("spiffe://kms.dev/{r}"))
            .collect();
        let mut clients = vec![ClientSpec {
            name: "client",
            common_name: "dev",
            uri: "spiffe://kms.dev/dev",
        }];
        for (role, uri) in ROLES.iter().zip(&uris) {
            clients.push(ClientSpec {
                name: role,
                common_name: role,
                uri,
            });
        }
        pki::generate(&tls_dir, &["localhost", "127.0.0.1"], &clients)?;
    }
    let policies = data_dir.join("policies");
    if !policies.exists() {
        std::fs::create_dir_all(&policies)
            .map_err(|e| format!("cannot create {}: {e}", policies.display()))?;
        for (name, text) in EXAMPLE_POLICIES {
            crate::storage::write_file(&policies.join(name), text.as_bytes(), 0o644)?;
        }
    }
    let authz = std::sync::Arc::new(crate::Authz::load(&policies)?);
    let server = pki::files(&tls_dir, "server");
    let config = Config {
        listen,
        tls: TlsConfig {
            cert: server.cert,
            key: server.key,
            client_ca: tls_dir.join("ca.pem"),
            crl: None,
        },
        storage: StorageConfig::Sled {
            path: data_dir.join("data"),
        },
        policies,
        audit: crate::audit::AuditConfig {
            path: data_dir.join("audit.log"),
            node: "dev".into(),
            sync: options.audit_sync,
            ship: options.ship_to.map(|addr| crate::audit::ship::ShipConfig {
                addr,
                server_name: "localhost".into(),
                ca: tls_dir.join("ca.pem"),
                client_cert: None,
                client_key: None,
            }),
            ..Default::default()
        },
        // Dev mode may lower the deletion waiting period to zero days, to try the lifecycle.
        keys: crate::keystore::KeySettings {
            min_deletion_waiting_days: 0,
            scheduler_interval_secs: 5,
            ..Default::default()
        },
        // The production limits, so dev mode behaves as deployed servers do.
        limits: Default::default(),
        // On by default, loopback only (docs/metrics.md).
        metrics: Default::default(),
        // Not pinned: dev mode may start over from an empty data directory.
        seal: Default::default(),
    };
    let tls = crate::load_tls(&config)?;
    let sink = crate::open_audit(&config)?;
    if !options.audit {
        sink.disable();
        println!("kms-server DEV MODE: --no-audit: NOTHING IS RECORDED in the audit log");
    }
    let seal = crate::open_seal(&config).await?;
    let share_path = data_dir.join(SHARE_FILE);
    if !seal.status().await.initialized {
        let new = seal.init(1, 1).await.map_err(|e| e.to_string())?;
        let share = new.shares.first().ok_or("init returned no share")?;
        crate::storage::write_file(&share_path, share.as_bytes(), 0o600)?;
    }
    let share = zeroize::Zeroizing::new(std::fs::read_to_string(&share_path).map_err(|e| {
        format!(
            "dev data dir {} is initialised but {} is unreadable ({e}); use a fresh --data-dir",
            data_dir.display(),
            share_path.display()
        )
    })?);
    seal.unseal(share.trim()).await.map_err(|e| e.to_string())?;

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read bound address: {e}"))?;
    let client = pki::files(&tls_dir, "client");
    let env = env_text(addr, &tls_dir.join("ca.pem"), &client.cert, &client.key);
    let env_path = data_dir.join("env");
    crate::storage::write_file(&env_path, env.as_bytes(), 0o644)?;
    println!(
        "kms-server DEV MODE: unsealed, single share in {} (never do this in production)",
        share_path.display()
    );
    println!("# source this to use kms-cli ({}):", env_path.display());
    print!("{env}");
    println!("kms-server listening on {addr}");
    crate::serve(
        listener,
        tls,
        &config,
        authz,
        sink,
        seal,
        crate::shutdown_signal(),
    )
    .await
}

fn env_text(addr: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        "export KMS_ADDR={}\nexport KMS_CA_CERT={}\nexport KMS_CLIENT_CERT={}\nexport KMS_CLIENT_KEY={}\n",
        shell_quote(&format!("https://{addr}")),
        q(ca),
        q(cert),
        q(key)
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The default dev data directory: `./.kms-dev`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".kms-dev")
}
