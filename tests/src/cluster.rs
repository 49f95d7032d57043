//! Several kms-server nodes on one PostgreSQL database: one PKI, one policy directory (as if
//! deployed by configuration management), one audit log and node name per node.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg::PgServer;
use crate::{Pki, Server, TEST_POLICY, bin};

/// The staleness bound the cluster tests configure (`[storage] max_staleness_ms`).
pub const MAX_STALENESS_MS: u64 = 500;

/// One cluster at a time per test binary: a cluster is PostgreSQL, up to three servers and
/// load generators, and several at once on a 2-core machine would overload it until the
/// nodes fail closed (UNAVAILABLE past the staleness bound) for reasons no test is about.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    pub pg: PgServer,
    pub root: tempfile::TempDir,
    pub pki: Pki,
    nodes: usize,
    // Last: released after the database is gone (the test's servers are dropped before).
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// `nodes` node configurations on a new PostgreSQL instance; `extra` ends every node's
    /// config file (e.g. a `[keys]` section).
    pub fn new(nodes: usize, extra: &str) -> Cluster {
        // A test that failed while holding it poisoned it; the next one may still run.
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let pg = PgServer::start();
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&root.path().join("tls"));
        let policies = root.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("test.toml"), TEST_POLICY).unwrap();
        let storage = pg.storage_toml_with(&format!("max_staleness_ms = {MAX_STALENESS_MS}"));
        for i in 0..nodes {
            let dir = root.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = format!(
                r#"listen = "127.0.0.1:0"
policies = "../policies"
[tls]
cert = "../tls/server.pem"
key = "../tls/server-key.pem"
client_ca = "../tls/ca.pem"
{storage}[audit]
path = "audit.log"
node = "kms-{i}"
{extra}"#
            );
            std::fs::write(dir.join("config.toml"), config).unwrap();
        }
        Cluster {
            pg,
            root,
            pki,
            nodes,
            _serial: serial,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Node `i`'s folder (config.toml, audit log, server.log).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node-{i}"))
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.root.path().join("policies")
    }

    /// Starts node `i` (sealed) and waits until it listens.
    pub fn start(&self, i: usize) -> Server {
        let dir = self.node_dir(i);
        Server::spawn(
            Command::new(bin("kms-server"))
                .arg("--config")
                .arg(dir.join("config.toml")),
            &dir.join("server.log"),
            self.pki.ca(),
            self.pki.client("client"),
        )
    }

    /// Starts every node, initialises the store through the first (1 of 1) and unseals each;
    /// returns the nodes and the share.
    pub async fn start_all_unsealed(&self) -> (Vec<Server>, String) {
        let nodes: Vec<Server> = (0..self.nodes).map(|i| self.start(i)).collect();
        let share = crate::init(&nodes[0], 1, 1).await.remove(0);
        for n in &nodes {
            crate::unseal_with(n, std::slice::from_ref(&share), &[1]).await;
        }
        (nodes, share)
    }

    /// Every audit log file of every node (rotated ones included).
    pub fn audit_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for i in 0..self.nodes {
            for e in std::fs::read_dir(self.node_dir(i)).unwrap() {
                let p = e.unwrap().path();
                if file_name(&p).starts_with("audit.log") {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---- waiting on nodes (shared by the cluster tests) ---------------------------------------

/// The gRPC code of a client error (panics on a transport error).
pub fn code(e: &kms_client::ClientError) -> tonic::Code {
    match e {
        kms_client::ClientError::Status(s) => s.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// Waits one whole staleness bound, then calls `op`; again while it answers UNAVAILABLE (the
/// node could not confirm its cache yet). Returns the first other answer: by then the node
/// must reflect every change acknowledged before the first wait.
pub async fn after_bound<T, F, Fut>(mut op: F) -> Result<T, kms_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kms_client::ClientError>>,
{
    // A hang guard only: 600 bounds (5 minutes) of UNAVAILABLE is a failure.
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(MAX_STALENESS_MS + 50)).await;
        match op().await {
            Err(e) if code(&e) == tonic::Code::Unavailable => continue,
            other => return other,
        }
    }
    panic!("the node answered UNAVAILABLE for 600 staleness bounds");
}

/// Calls `op` at once, and again while it answers UNAVAILABLE (a node failing closed on an
/// overloaded machine); returns the first other answer.
pub async fn unless_unavailable<T, F, Fut>(mut op: F) -> Result<T, kms_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kms_client::ClientError>>,
{
    // A hang guard only.
    for _ in 0..3000 {
        match op().await {
            Err(e) if code(&e) == tonic::Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    panic!("the node answered UNAVAILABLE for 300 s");
}
