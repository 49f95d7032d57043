//! Deployment (`deploy/`, `docs/deployment.md`): the hardened systemd unit and its sysusers and
//! tmpfiles snippets, the production config, and the health semantics given to load balancers.
//!
//! The unit is checked as text everywhere, and by `systemd-analyze verify` and `systemd-analyze
//! security` where systemd-analyze is installed (a note is printed otherwise); the production
//! config starts a real server with only its root folders moved into a temporary directory.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kms_server::{Config, StorageConfig};
use kms_tests::cluster::Cluster;
use kms_tests::{Pki, Server, bin};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy_dir().join("kms-server.service")).unwrap()
}

fn production_config_text() -> String {
    std::fs::read_to_string(deploy_dir().join("config.production.toml")).unwrap()
}

/// One `Key=Value` assignment of a unit file, with its section.
#[derive(Debug)]
struct Assignment {
    section: String,
    key: String,
    value: String,
}

/// Parses a systemd unit file as INI (systemd.syntax(7)): `[Section]` headers, `Key=Value`
/// lines, `#` and `;` comments, blank lines. Panics on any other line, on a line continued
/// with a backslash (not used here, so one would be a mistake), and on an assignment before
/// the first section.
fn parse_unit(text: &str) -> Vec<Assignment> {
    let mut section = None::<String>;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line {}: continued line", i + 1);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=Value: {raw}", i + 1));
        let key = key.trim();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "line {}: bad key {key:?}",
            i + 1
        );
        out.push(Assignment {
            section: section
                .clone()
                .unwrap_or_else(|| panic!("line {}: assignment before any section", i + 1)),
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    out
}

/// The single value of `key` in `[Service]`; panics if it is missing or assigned twice (a
/// later line would silently override or extend the reviewed one).
fn service_value<'a>(unit: &'a [Assignment], key: &str) -> &'a str {
    let found: Vec<&Assignment> = unit
        .iter()
        .filter(|a| a.section == "Service" && a.key == key)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "[Service] {key} must be set exactly once: {found:?}"
    );
    &found[0].value
}

/// Every hardening directive the deployment relies on, with its exact value.
const REQUIRED: &[(&str, &str)] = &[
    ("Type", "simple"),
    (
        "ExecStart",
        "/usr/local/bin/kms-server --config /etc/kms/config.toml",
    ),
    ("User", "kms"),
    ("Group", "kms"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ReadWritePaths", "/var/lib/kms"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LimitCORE", "0"),
    ("LockPersonality", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    // mlockall is all harden.rs needs a capability for: nothing else in the bounding set.
    ("CapabilityBoundingSet", "CAP_IPC_LOCK"),
    ("AmbientCapabilities", "CAP_IPC_LOCK"),
    ("LimitMEMLOCK", "infinity"),
    ("UMask", "0077"),
    ("KillSignal", "SIGTERM"),
    ("Restart", "on-failure"),
];

/// Seconds of a systemd time span written as `N` or `Ns` (the only forms the unit uses).
fn seconds(span: &str) -> u64 {
    span.strip_suffix('s')
        .unwrap_or(span)
        .parse()
        .unwrap_or_else(|_| panic!("TimeoutStopSec={span}: write it as N or Ns"))
}

/// The unit parses as INI and sets each hardening directive, once, to the reviewed value; it
/// gives the server longer to stop than the server's own shutdown grace; it runs as the user
/// the sysusers snippet creates, and the folders of the tmpfiles snippet match the unit's
/// paths.
#[test]
fn the_unit_sets_every_hardening_directive() {
    let unit = parse_unit(&unit_text());
    for (key, want) in REQUIRED {
        assert_eq!(service_value(&unit, key), *want, "[Service] {key}");
    }
    let stop = seconds(service_value(&unit, "TimeoutStopSec"));
    assert!(
        Duration::from_secs(stop) > kms_server::SHUTDOWN_GRACE + Duration::from_secs(5),
        "TimeoutStopSec={stop} leaves the server no time to seal after its {:?} grace",
        kms_server::SHUTDOWN_GRACE
    );
    assert!(
        unit.iter()
            .any(|a| a.section == "Install" && a.key == "WantedBy"),
        "no [Install] WantedBy: `systemctl enable` would do nothing"
    );

    let sysusers = std::fs::read_to_string(deploy_dir().join("sysusers.d/kms.conf")).unwrap();
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        entries.iter().any(|e| e[..2] == ["u", "kms"]),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e[..2] == ["g", "kms"]),
        "{entries:?}"
    );

    let tmpfiles = std::fs::read_to_string(deploy_dir().join("tmpfiles.d/kms.conf")).unwrap();
    let state: Vec<&str> = tmpfiles
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|e| e.len() >= 5 && e[1] == "/var/lib/kms")
        .expect("tmpfiles creates /var/lib/kms");
    assert_eq!(state[..5], ["d", "/var/lib/kms", "0700", "kms", "kms"]);
}

/// Whether `program` can be run (it answers `--version`); prints why not otherwise.
fn have(program: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!(
                "NOTE: {program} is not installed: its check is skipped (the other checks ran)"
            );
            false
        }
    }
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at the kms-server just
/// built, since verify requires an executable), and `systemd-analyze security` rates its
/// exposure at most 2.0 ("OK"). Skipped, with a note, where systemd-analyze is not installed.
#[test]
fn systemd_analyze_accepts_the_unit() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let original = unit_text();
    let server = bin("kms-server");
    let unit = original.replace(
        "ExecStart=/usr/local/bin/kms-server ",
        &format!("ExecStart={} ", server.display()),
    );
    assert_ne!(unit, original, "ExecStart was not rewritten");
    let path = dir.path().join("kms-server.service");
    std::fs::write(&path, unit).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Warnings about other units of the machine may appear; none may be about ours.
    assert!(
        !stderr.contains("kms-server.service"),
        "systemd-analyze verify warned:\n{stderr}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unrecognized option") {
        eprintln!("NOTE: this systemd-analyze has no `security --offline`: exposure not rated");
        return;
    }
    assert!(
        stdout.contains("Overall exposure level"),
        "no rating:\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success(),
        "exposure above 2.0 (the \"OK\" band):\n{}",
        stdout
            .lines()
            .filter(|l| l.contains('✗') || l.contains("Overall"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `systemd-sysusers` creates the `kms` account from the snippet (no login shell), and
/// `systemd-tmpfiles` then creates `/var/lib/kms` as kms:kms 0700 and `/etc/kms` as root:kms
/// 0750, in a scratch root. Skipped, with a note, where they are not installed.
#[test]
fn sysusers_and_tmpfiles_create_the_account_and_folders() {
    use std::os::unix::fs::MetadataExt;
    if !have("systemd-sysusers") || !have("systemd-tmpfiles") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let run = |program: &str, args: &[&str], file: &str| {
        let out = Command::new(program)
            .arg(format!("--root={}", root.path().display()))
            .args(args)
            .arg(deploy_dir().join(file).canonicalize().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("systemd-sysusers", &[], "sysusers.d/kms.conf");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let kms: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("kms:"))
        .expect("kms user created")
        .split(':')
        .collect();
    assert_eq!(kms[5], "/var/lib/kms", "home");
    assert_eq!(kms[6], "/usr/sbin/nologin", "shell");
    let uid: u32 = kms[2].parse().unwrap();
    assert_ne!(uid, 0);

    run("systemd-tmpfiles", &["--create"], "tmpfiles.d/kms.conf");
    let state = std::fs::metadata(root.path().join("var/lib/kms")).unwrap();
    assert!(state.is_dir());
    assert_eq!(state.mode() & 0o7777, 0o700);
    assert_eq!(state.uid(), uid);
    let etc = std::fs::metadata(root.path().join("etc/kms")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!(etc.uid(), 0);
}

/// The lines of the commented PostgreSQL block of the production config, uncommented.
fn postgres_block(text: &str) -> String {
    let start = text
        .find("# -- postgres block start --\n")
        .expect("postgres block start marker");
    let end = text
        .find("# -- postgres block end --")
        .expect("postgres block end marker");
    text[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("# # ") && l.contains(" = "))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The production config loads; its TLS, policy, storage and audit paths are the ones the
/// unit and docs/deployment.md install; everything the server writes is under the unit's only
/// writable path; `[keys]` and `[limits]` are the defaults; a CRL is configured (revoked
/// client certificates refused). Its commented PostgreSQL block, swapped in for the sled
/// lines, loads too.
#[test]
fn the_production_config_loads_and_writes_only_under_the_state_directory() {
    let unit = parse_unit(&unit_text());
    let writable = Path::new(service_value(&unit, "ReadWritePaths"));
    let exec = service_value(&unit, "ExecStart");
    let config_path = exec.rsplit(' ').next().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let text = production_config_text();
    std::fs::write(&file, &text).unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config_path, "/etc/kms/config.toml");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8200");
    assert_eq!(config.policies, Path::new("/etc/kms/policies"));
    assert_eq!(config.tls.cert, Path::new("/etc/kms/tls/server.pem"));
    assert_eq!(config.tls.key, Path::new("/etc/kms/tls/server-key.pem"));
    assert_eq!(
        config.tls.client_ca,
        Path::new("/etc/kms/tls/client-ca.pem")
    );
    assert_eq!(
        config.tls.crl.as_deref(),
        Some(Path::new("/etc/kms/tls/client-ca.crl.pem"))
    );
    let StorageConfig::Sled { path } = &config.storage else {
        panic!("production storage is sled: {:?}", config.storage)
    };
    assert!(path.starts_with(writable), "{}", path.display());
    assert!(
        config.audit.path.starts_with(writable),
        "{}",
        config.audit.path.display()
    );
    assert!(config.audit.ship.is_none());
    assert!(config.metrics.enabled);
    assert_eq!(config.metrics.listen, Some(METRICS.parse().unwrap()));
    assert!(config.metrics.address().ip().is_loopback());
    let defaults = kms_server::AuditConfig::default();
    assert_eq!(config.audit.max_bytes, defaults.max_bytes);
    assert_eq!(config.audit.sync_interval_ms, defaults.sync_interval_ms);
    assert_eq!(
        format!("{:?}", config.audit.sync),
        format!("{:?}", defaults.sync)
    );
    assert_eq!(
        format!("{:?}", config.limits),
        format!("{:?}", kms_server::LimitsConfig::default())
    );
    assert_eq!(
        format!("{:?}", config.keys),
        format!("{:?}", kms_server::keystore::KeySettings::default())
    );

    // The PostgreSQL alternative: the sled lines replaced by the uncommented block.
    let sled = "backend = \"sled\"\npath = \"/var/lib/kms/data\"\n";
    assert!(text.contains(sled));
    let block = postgres_block(&text);
    assert!(block.contains("backend = \"postgres\""), "{block}");
    std::fs::write(&file, text.replace(sled, &format!("{block}\n"))).unwrap();
    let pg = Config::load(&file).unwrap();
    let StorageConfig::Postgres(pg) = &pg.storage else {
        panic!(
            "the postgres block did not select PostgreSQL: {:?}",
            pg.storage
        )
    };
    assert_eq!(pg.max_staleness(), Duration::from_millis(1000));
}

/// The production config's metrics listener (tests use port 0: several servers run at once).
const METRICS: &str = "127.0.0.1:9464";

/// The production layout in a temporary root: `/etc/kms` and `/var/lib/kms` moved into it,
/// TLS files in place, the example policies installed as docs/deployment.md says (all but
/// dev.toml, no `exempt` line), listening on 127.0.0.1:0.
struct Production {
    root: tempfile::TempDir,
    pki: Pki,
}

impl Production {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&root.path().join("pki"));
        let p = Production { root, pki };
        let tls = p.etc().join("tls");
        let policies = p.etc().join("policies");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::create_dir_all(p.var()).unwrap();
        for (from, to) in [
            ("server.pem", "server.pem"),
            ("server-key.pem", "server-key.pem"),
            ("ca.pem", "client-ca.pem"),
            ("crl.pem", "client-ca.crl.pem"),
        ] {
            std::fs::copy(p.pki.dir.join(from), tls.join(to)).unwrap();
        }
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for e in std::fs::read_dir(examples).unwrap() {
            let f = e.unwrap().path();
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            if !name.ends_with(".toml") || name == "dev.toml" {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with("exempt"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(policies.join(name), text).unwrap();
        }
        let original = production_config_text();
        let listen = "listen = \"0.0.0.0:8200\"";
        assert!(original.contains(listen));
        assert!(original.contains(&format!("listen = \"{METRICS}\"")));
        let config = original
            .replace(listen, "listen = \"127.0.0.1:0\"")
            .replace(METRICS, "127.0.0.1:0")
            .replace("\"/etc/kms/", &format!("\"{}/", p.etc().display()))
            .replace("\"/var/lib/kms/", &format!("\"{}/", p.var().display()));
        assert!(!config.contains("\"/etc/") && !config.contains("\"/var/"));
        std::fs::write(p.config(), config).unwrap();
        p
    }

    fn etc(&self) -> PathBuf {
        self.root.path().join("etc/kms")
    }

    fn var(&self) -> PathBuf {
        self.root.path().join("var/lib/kms")
    }

    fn config(&self) -> PathBuf {
        self.etc().join("config.toml")
    }

    /// Starts kms-server on the production config; its client is an officer (may seal).
    fn start(&self) -> Server {
        Server::spawn(
            Command::new(bin("kms-server"))
                .arg("--config")
                .arg(self.config()),
            &self.root.path().join("server.log"),
            self.pki.ca(),
            self.pki.client("officer"),
        )
    }
}

/// The health of `service` as a load balancer sees it: a status, or the gRPC error code.
async fn health(ch: &Channel, service: &str) -> Result<ServingStatus, tonic::Code> {
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

/// What a load balancer sees of the data services ("", Crypto, KeyAdmin) and of Operator.
async fn all_health(ch: &Channel) -> [Result<ServingStatus, tonic::Code>; 4] {
    [
        health(ch, "").await,
        health(ch, "kms.v1.Crypto").await,
        health(ch, "kms.v1.KeyAdmin").await,
        health(ch, "kms.v1.Operator").await,
    ]
}

const SEALED: [Result<ServingStatus, tonic::Code>; 4] = [
    Ok(ServingStatus::NotServing),
    Ok(ServingStatus::NotServing),
    Ok(ServingStatus::NotServing),
    Ok(ServingStatus::Serving),
];
const UNSEALED: [Result<ServingStatus, tonic::Code>; 4] = [Ok(ServingStatus::Serving); 4];

/// Health as docs/deployment.md documents it, on a server started from the production config:
/// NOT_SERVING for "", kms.v1.Crypto and kms.v1.KeyAdmin from start until the threshold of
/// shares is reached (one share of two changes nothing), SERVING once unsealed, NOT_SERVING
/// again after Seal and after a restart (a restarted node is sealed); kms.v1.Operator always
/// SERVING; an unknown service NOT_FOUND. The server writes only under the state directory
/// (nothing appears under /etc/kms), stops cleanly on SIGTERM, answers health to any
/// certificate of the client CA (no policy rule needed), and refuses a revoked client
/// certificate through the production config's CRL.
/// [ANSSI TLS guide via SNC 10.2.c: revoked certificates refused, hard fail]
#[tokio::test]
async fn health_on_the_production_config_follows_the_seal() {
    let prod = Production::new();
    let etc_before = list_files(&prod.etc());
    let server = prod.start();
    let client = server.client().await;
    let ch = client.channel();
    assert_eq!(all_health(&ch).await, SEALED, "before init");
    assert_eq!(
        health(&ch, "kms.v1.NoSuchService").await,
        Err(tonic::Code::NotFound)
    );

    let shares = kms_tests::init(&server, 3, 2).await;
    assert_eq!(all_health(&ch).await, SEALED, "initialised, still sealed");
    let progress = client.unseal(&shares[0]).await.unwrap();
    assert!(progress.sealed);
    assert_eq!(all_health(&ch).await, SEALED, "one share of two");
    let done = client.unseal(&shares[2]).await.unwrap();
    assert!(!done.sealed);
    assert_eq!(all_health(&ch).await, UNSEALED, "unsealed");

    // The state directory holds what the server wrote; /etc/kms is as installed.
    assert!(prod.var().join("data").is_dir());
    assert!(prod.var().join("audit.log").is_file());
    assert_eq!(list_files(&prod.etc()), etc_before);

    // A health checker needs a certificate from the client CA, and no policy rule: `client`
    // has no rule in the example policies.
    let checker = kms_client::Client::connect(&server.options(&prod.pki.client("client")))
        .await
        .unwrap();
    assert_eq!(all_health(&checker.channel()).await, UNSEALED, "rule-less");

    // The production CRL is in force: a revoked client gets no answer, not even health.
    let revoked = server.options(&prod.pki.client("revoked"));
    if let Ok(c) = kms_client::Client::connect(&revoked).await {
        assert!(health(&c.channel(), "").await.is_err());
    }

    client.seal().await.unwrap();
    assert_eq!(all_health(&ch).await, SEALED, "after Seal");
    kms_tests::unseal_with(&server, &shares, &[2, 3]).await;
    assert_eq!(all_health(&ch).await, UNSEALED, "unsealed again");

    // What Restart=on-failure or a reboot gives: the node comes back sealed.
    assert!(
        server.terminate(),
        "kms-server did not exit cleanly on SIGTERM"
    );
    let server = prod.start();
    let ch = server.client().await.channel();
    assert_eq!(all_health(&ch).await, SEALED, "after a restart");
    kms_tests::unseal_with(&server, &shares, &[1, 2]).await;
    assert_eq!(all_health(&ch).await, UNSEALED, "unsealed after restart");
    assert_eq!(list_files(&prod.etc()), etc_before);
}

/// Every file under `dir`, relative, sorted.
fn list_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Polls the health of kms.v1.Crypto until it is `want`; panics after `bound`.
async fn wait_for(ch: &Channel, want: ServingStatus, bound: Duration, what: &str) {
    let deadline = Instant::now() + bound;
    loop {
        let now = health(ch, "kms.v1.Crypto").await;
        if now == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kms.v1.Crypto still {now:?} {bound:?} after {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On PostgreSQL, an unsealed node that cannot follow the database reports NOT_SERVING for
/// the data services (load balancers route around it) while kms.v1.Operator stays SERVING,
/// and SERVING again once the database is back, without being unsealed again.
#[tokio::test]
async fn health_is_not_serving_while_a_node_cannot_follow_postgres() {
    let mut cluster = Cluster::new(1, "");
    let (nodes, _share) = cluster.start_all_unsealed().await;
    let ch = nodes[0].client().await.channel();
    assert_eq!(all_health(&ch).await, UNSEALED);

    cluster.pg.stop();
    // The node notices at its next check (every quarter of max_staleness_ms, each bounded by
    // the connect timeout); the bound is generous for a loaded machine.
    wait_for(
        &ch,
        ServingStatus::NotServing,
        Duration::from_secs(60),
        "PostgreSQL stopped",
    )
    .await;
    assert_eq!(
        all_health(&ch).await,
        SEALED,
        "data services NOT_SERVING, Operator SERVING"
    );

    cluster.pg.start_again();
    wait_for(
        &ch,
        ServingStatus::Serving,
        Duration::from_secs(60),
        "PostgreSQL started again",
    )
    .await;
    assert_eq!(all_health(&ch).await, UNSEALED);
}

/// Whether this test runs as root (to hand files to another user, as the install does).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}

/// The unprivileged account of [`the_units_privileges_are_enough`] (`nobody`).
const KMS_UID: u32 = 65534;

/// The privileges the unit gives, without systemd: the server runs as an unprivileged user
/// (`setpriv`), with CAP_IPC_LOCK as its only capability (bounding, ambient), no new
/// privileges, `LimitCORE=0` (`prlimit`) and `UMask=0077`, on the
/// production layout with its documented ownership (`/etc/kms` root:kms 0750/0640,
/// `/var/lib/kms` kms:kms 0700). It starts, locks its memory (so CAP_IPC_LOCK is all
/// harden.rs needs), serves once unsealed, and its files are private to its user. Needs root,
/// `setpriv` and `prlimit` (util-linux); skipped with a note otherwise.
#[tokio::test]
async fn the_units_privileges_are_enough() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    if !running_as_root() {
        eprintln!("NOTE: not root: cannot run the server as another user; check skipped");
        return;
    }
    let drop_privileges = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+ipc_lock",
        "--ambient-caps=-all,+ipc_lock",
        "--bounding-set=-all,+ipc_lock",
        "--no-new-privs",
    ];
    // RLIMIT_MEMLOCK stays as the machine has it: raising it needs CAP_SYS_RESOURCE, which a
    // container may lack. Where it is finite, this shows CAP_IPC_LOCK alone is enough.
    let limits = ["prlimit", "--core=0:0"];
    let probe = Command::new("sh")
        .args(["-c", "umask 0077 && exec \"$@\"", "sh"])
        .args(limits)
        .args(drop_privileges)
        .arg("true")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("NOTE: setpriv or prlimit missing or refused here: check skipped");
        return;
    }

    let prod = Production::new();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    // The folders above the layout: traversable, as / and /var are.
    for p in [
        prod.root.path().to_path_buf(),
        prod.root.path().join("etc"),
        prod.root.path().join("var"),
        prod.root.path().join("var/lib"),
    ] {
        mode(&p, 0o755);
    }
    // The documented ownership: root:kms, 0750 folders and 0640 files, under /etc/kms.
    fn restrict(p: &Path, dir_mode: u32, file_mode: u32) {
        chown(p, Some(0), Some(KMS_UID)).unwrap();
        let m = if p.is_dir() { dir_mode } else { file_mode };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                restrict(&e.unwrap().path(), dir_mode, file_mode);
            }
        }
    }
    restrict(&prod.etc(), 0o750, 0o640);
    chown(prod.var(), Some(KMS_UID), Some(KMS_UID)).unwrap();
    mode(&prod.var(), 0o700);
    // The server's stderr: written by the test (root), as the journal would be.
    let log = prod.root.path().join("server.log");

    let server = Server::spawn(
        Command::new("sh")
            .args(["-c", "umask 0077 && exec \"$@\"", "sh"])
            .args(limits)
            .args(drop_privileges)
            .arg(bin("kms-server"))
            .arg("--config")
            .arg(prod.config()),
        &log,
        prod.pki.ca(),
        prod.pki.client("officer"),
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), KMS_UID.to_string(), "{status}");
    assert_eq!(field("CapEff:"), "0000000000004000", "CAP_IPC_LOCK only");
    assert_eq!(field("CapBnd:"), "0000000000004000", "CAP_IPC_LOCK only");
    assert_eq!(field("NoNewPrivs:"), "1");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("memory locked"), "{logged}");
    assert!(!logged.contains("memory not locked"), "{logged}");

    let shares = kms_tests::init(&server, 1, 1).await;
    kms_tests::unseal_with(&server, &shares, &[1]).await;
    let ch = server.client().await.channel();
    assert_eq!(all_health(&ch).await, UNSEALED);

    // UMask=0077: what the server created is its user's alone.
    for p in [prod.var().join("data"), prod.var().join("audit.log")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.uid(), KMS_UID, "{}", p.display());
        assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", p.display(), m.mode());
    }
    assert!(server.terminate(), "no clean exit on SIGTERM");
}
