//! Test harness: starts the real `kms-server` binary on 127.0.0.1:0 with real TLS and a real
//! data directory, and drives it with the real client library and the real `kms-cli`.
//!
//! Readiness is the server's "listening on ADDR" line, never a sleep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod cluster;
pub mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use kms_client::{Client, ConnectOptions};
use kms_server::transport::pki::{self, ClientSpec};
use rustls_pki_types::pem::PemObject;

/// Path of a workspace binary. `cargo test --workspace` builds them next to the test's `deps/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A CA with a server certificate and client certificates `client` and `other`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Also issues `revoked`, a client certificate listed in `crl.pem`.
    pub fn generate(dir: &Path) -> Self {
        pki::generate_with_crl(
            dir,
            &["localhost", "127.0.0.1"],
            &[
                ClientSpec {
                    name: "client",
                    common_name: "test-operator",
                    uri: "spiffe://kms.test/operator",
                },
                ClientSpec {
                    name: "other",
                    common_name: "test-other",
                    uri: "spiffe://kms.test/other",
                },
                ClientSpec {
                    name: "admin",
                    common_name: "admin",
                    uri: "spiffe://kms.dev/admin",
                },
                ClientSpec {
                    name: "service",
                    common_name: "service",
                    uri: "spiffe://kms.dev/service",
                },
                ClientSpec {
                    name: "auditor",
                    common_name: "auditor",
                    uri: "spiffe://kms.dev/auditor",
                },
                ClientSpec {
                    name: "officer",
                    common_name: "officer",
                    uri: "spiffe://kms.dev/officer",
                },
                ClientSpec {
                    name: "revoked",
                    common_name: "test-revoked",
                    uri: "spiffe://kms.test/revoked",
                },
            ],
            &["revoked"],
        )
        .unwrap();
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn client(&self, name: &str) -> pki::CertFiles {
        pki::files(&self.dir, name)
    }
}

/// One installation: a PKI and a data directory, which servers are started on and restarted.
pub struct Installation {
    pub root: tempfile::TempDir,
    pub pki: Pki,
}

impl Default for Installation {
    fn default() -> Self {
        Self::new()
    }
}

impl Installation {
    /// An installation with the production defaults.
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// An installation whose config file ends with `extra` (e.g. a `[keys]` section).
    pub fn with_config(extra: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&root.path().join("tls"));
        let config = r#"listen = "127.0.0.1:0"
policies = "policies"
[tls]
cert = "tls/server.pem"
key = "tls/server-key.pem"
client_ca = "tls/ca.pem"
crl = "tls/crl.pem"
[storage]
backend = "sled"
path = "data"
"#;
        std::fs::write(root.path().join("config.toml"), format!("{config}{extra}")).unwrap();
        let policies = root.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("test.toml"), TEST_POLICY).unwrap();
        Self { root, pki }
    }

    /// Replaces the test policy with the repository's example policies (`policies/`).
    pub fn use_example_policies(&self) {
        let dir = self.root.path().join("policies");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for e in std::fs::read_dir(examples).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.root.path().join("policies")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Starts `kms-server --config` and waits for its "listening on" line.
    pub fn start(&self) -> Server {
        Server::spawn(
            Command::new(bin("kms-server"))
                .arg("--config")
                .arg(self.root.path().join("config.toml")),
            &self.root.path().join("server.log"),
            self.pki.ca(),
            self.pki.client("client"),
        )
    }

    /// Starts the server as [`Installation::start`] does, at debug level with JSON logs
    /// (`KMS_LOG=debug`, `--log-format json`): more lines, more chances for a secret to slip
    /// into one. Its stderr goes to `server.log`.
    pub fn start_debug_json(&self) -> Server {
        Server::spawn(
            Command::new(bin("kms-server"))
                .env("KMS_LOG", "debug")
                .env_remove("KMS_LOG_FORMAT")
                .args(["--log-format", "json", "--config"])
                .arg(self.root.path().join("config.toml")),
            &self.root.path().join("server.log"),
            self.pki.ca(),
            self.pki.client("client"),
        )
    }
}

/// The gRPC status of a failed call (panics on a transport error).
pub fn status(e: kms_client::ClientError) -> tonic::Status {
    match e {
        kms_client::ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// An encryption context from `(key, value)` pairs.
pub fn ctx(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running server process. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    ca: PathBuf,
    client: pki::CertFiles,
}

impl Server {
    /// Spawns `cmd` and reads its stdout up to the "kms-server listening on ADDR" line.
    pub fn spawn(cmd: &mut Command, log: &Path, ca: PathBuf, client: pki::CertFiles) -> Server {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("kms-server listening on ") {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("kms-server exited before listening; its log:\n{log}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr: format!("https://{addr}"),
            ca,
            client,
        }
    }

    pub fn options(&self, client: &pki::CertFiles) -> ConnectOptions {
        ConnectOptions {
            addr: self.addr.clone(),
            ca_cert: self.ca.clone(),
            client_cert: client.cert.clone(),
            client_key: client.key.clone(),
            server_name: Some("localhost".into()),
        }
    }

    /// A client connected with the certificate `name` of the installation's PKI.
    pub async fn client_as(&self, pki: &Pki, name: &str) -> Client {
        Client::connect(&self.options(&pki.client(name)))
            .await
            .unwrap()
    }

    /// A connected client with the default test client certificate.
    pub async fn client(&self) -> Client {
        Client::connect(&self.options(&self.client)).await.unwrap()
    }

    /// Runs `kms-cli` against this server with the connection in the environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, "")
    }

    /// Connects a kms-cli or kms-bench command as the test client (environment variables).
    fn client_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("KMS_ADDR", &self.addr)
            .env("KMS_CA_CERT", &self.ca)
            .env("KMS_CLIENT_CERT", &self.client.cert)
            .env("KMS_CLIENT_KEY", &self.client.key)
            .env("KMS_TLS_SERVER_NAME", "localhost")
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .client_env(Command::new(bin("kms-cli")).args(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown path runs, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI and parses its JSON output; panics with stderr if it failed.
pub fn cli_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kms-cli failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The test operator may do everything; `other` and `revoked` get nothing (default deny).
pub const TEST_POLICY: &str = r#"
[[rule]]
id = "test-operator-all"
effect = "allow"
principals = ["spiffe://kms.test/operator"]
operations = ["encrypt", "decrypt", "reencrypt", "generate-data-key", "generate-random",
  "create", "read", "list", "rotate", "configure", "disable", "enable", "revoke",
  "schedule-deletion", "cancel-deletion", "import", "export", "seal", "rekey",
  "rotate-barrier", "backup", "policy-read", "policy-reload", "audit-read"]
keys = ["**"]
"#;

/// Lets `other` create keys under `mfa/` only with a TOTP code (MFA tests).
pub const MFA_POLICY: &str = r#"
[[rule]]
id = "other-create-with-mfa"
effect = "allow"
principals = ["spiffe://kms.test/other"]
operations = ["create"]
keys = ["mfa/**"]
mfa = true
"#;

/// Test settings for the key lifecycle: zero-day deletion allowed, scheduler every second.
pub const FAST_LIFECYCLE: &str =
    "[keys]\nmin_deletion_waiting_days = 0\nscheduler_interval_secs = 1\n";

/// Starts a server on `inst`, initialised 1-of-1 on first use, and unseals it.
pub async fn start_unsealed(inst: &Installation, share: &mut Option<String>) -> Server {
    let server = inst.start();
    let s = match share {
        Some(s) => s.clone(),
        None => {
            let s = init(&server, 1, 1).await.remove(0);
            *share = Some(s.clone());
            s
        }
    };
    unseal_with(&server, &[s], &[1]).await;
    server
}

/// Initialises through the client library; returns the shares in index order.
pub async fn init(server: &Server, n: u32, t: u32) -> Vec<String> {
    let resp = server.client().await.init(n, t).await.unwrap();
    assert_eq!(resp.shares.len(), n as usize);
    resp.shares
}

/// Submits the given shares (1-based indexes) and asserts the KMS ends unsealed.
pub async fn unseal_with(server: &Server, shares: &[String], indexes: &[usize]) {
    let client = server.client().await;
    let mut last = None;
    for i in indexes {
        last = Some(client.unseal(&shares[i - 1]).await.unwrap());
    }
    let status = last.unwrap();
    assert!(
        !status.sealed,
        "still sealed after shares {indexes:?}: {status:?}"
    );
}

impl Server {
    /// Runs `kms-bench` against this server, connected like [`Server::cli`] (the test client's
    /// certificate, in the environment); a flag such as `--addr` overrides.
    pub fn bench(&self, args: &[&str]) -> Output {
        self.client_env(Command::new(bin("kms-bench")).args(args))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Server::bench`] in the background: its output is read from the returned child.
    pub fn bench_spawn(&self, args: &[&str]) -> Child {
        self.client_env(Command::new(bin("kms-bench")).args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Copies the folder `from` to `to` recursively, replacing `to` if it exists (data directories,
/// for tests that damage or read a copy).
pub fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A rustls client configuration for raw TLS tests: the installation's CA, the `client`
/// certificate, the given TLS versions, ALPN h2.
pub fn rustls_client(
    inst: &Installation,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(inst.pki.ca()).unwrap())
        .unwrap();
    let c = inst.pki.client("client");
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&c.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&c.key).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

/// An installation's secrets, recovered offline from its stored seal record and `shares`
/// (tests that search disks or memory for them).
pub struct Recovered {
    pub root_secret: kms_core::Secret32,
    pub root_key: kms_core::barrier::RootKey,
    pub keyring: kms_core::barrier::Keyring,
}

/// Recovers the root secret, root key and keyring from `backend` (a stopped server's data
/// directory) and enough of its shares.
pub async fn recover_offline(
    backend: &kms_server::storage::SledBackend,
    shares: &[String],
) -> Recovered {
    use kms_core::shares::{Commitments, Share};
    use kms_server::storage::Backend;
    let seal = backend.get("core/seal").await.unwrap().unwrap();
    let record: serde_json::Value = serde_json::from_slice(&seal.value).unwrap();
    let field = |name: &str| hex::decode(record[name].as_str().unwrap()).unwrap();
    let commitments = Commitments::from_bytes(&field("commitments")).unwrap();
    let parsed: Vec<Share> = shares.iter().map(|s| s.parse().unwrap()).collect();
    let root_secret = kms_core::shares::combine(&parsed, &commitments).unwrap();
    let root_key = kms_core::barrier::RootKey::derive(&root_secret, &field("installation_id"));
    let keyring = kms_core::barrier::Keyring::open_under(&root_key, &field("keyring")).unwrap();
    Recovered {
        root_secret,
        root_key,
        keyring,
    }
}

/// Decodes RFC 4648 base32 (upper case, no padding), as MFA enrolment returns the TOTP secret.
pub fn base32_decode(s: &str) -> Vec<u8> {
    let (mut buf, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("bad base32"),
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}
