//! A private PostgreSQL server per test: its own data directory (a tempdir), its own port on
//! 127.0.0.1, trust authentication for the `postgres` user, a database `kms`.
//!
//! PostgreSQL must be installed (`apt-get install -y postgresql`, as `.ci/run` does); a test
//! that needs it panics when it is not, rather than passing without having run. PostgreSQL
//! refuses to run as root, so under root the server and `initdb` run as the `postgres` OS user
//! (through `runuser`), and the directory is given to that user.
//!
//! Readiness is `pg_isready` answering, polled for at most 30 s; on a failure the panic shows
//! the server's log (`DIR/postgres.log`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a start (or a restart after a kill) may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One running (or stopped) PostgreSQL instance. Dropping it kills the server and removes its
/// directory.
pub struct PgServer {
    /// Holds `data/` (the cluster), the server's Unix socket and `postgres.log`.
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    /// Whether `initdb`/`postgres` run as the `postgres` OS user (we are root).
    as_postgres: bool,
    /// The spawned process: the postmaster itself, or `runuser` whose child it is.
    child: Option<Child>,
}

impl PgServer {
    /// Creates, starts and waits for a new instance with an empty database `kms` (UTF-8, ICU
    /// collation en-US).
    ///
    /// Panics if PostgreSQL is not installed or does not become ready within 30 s (with the
    /// server's log).
    pub fn start() -> PgServer {
        let bindir = bindir();
        let as_postgres = running_as_root();
        // Under root the directory must be reachable by the `postgres` user: /tmp is, a private
        // TMPDIR may not be.
        let parent = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("kms-pg-")
            .tempdir_in(&parent)
            .expect("create a tempdir for PostgreSQL");
        if as_postgres {
            run_ok(Command::new("chown").arg("postgres:").arg(dir.path()));
        }
        let mut server = PgServer {
            dir,
            bindir,
            port: 0,
            as_postgres,
            child: None,
        };
        let mut initdb = server.pg_command("initdb");
        initdb.arg("-D").arg(server.data_dir()).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            // No fsync of the fresh cluster (about half of initdb's time on a busy machine):
            // only a power loss could lose it, and a test server does not outlive one. The
            // server itself runs with fsync=on, so what the tests write is durable.
            "--no-sync",
        ]);
        run_ok(&mut initdb);

        // A port that was free a moment ago may be taken before PostgreSQL binds it (another
        // test, another process): retry with another.
        let mut last_log = String::new();
        for _ in 0..5 {
            server.port = free_port();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => {
                    // A linguistic collation (ICU en-US), as production databases often
                    // have: a backend that leaves key order to the database's collation
                    // instead of byte order then fails the tests instead of passing by luck.
                    server.psql_in(
                        "postgres",
                        "CREATE DATABASE kms TEMPLATE template0 ENCODING 'UTF8' \
                         LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
                    );
                    return server;
                }
                Err(log) => {
                    server.kill_processes();
                    if !log.contains("could not bind") && !log.contains("could not create") {
                        panic!("PostgreSQL did not start; its log:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("PostgreSQL could not bind a free port in 5 tries; its log:\n{last_log}");
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string for the database `kms`.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=kms", self.port)
    }

    /// Creates another empty database `name` (same collation as `kms`); returns its
    /// connection string.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        ));
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={name}",
            self.port
        )
    }

    /// The `[storage]` section of a kms-server config using this database.
    pub fn storage_toml(&self) -> String {
        self.storage_toml_with("")
    }

    /// [`PgServer::storage_toml`] followed by `extra` (more lines of the section, e.g.
    /// `max_staleness_ms = 500`).
    pub fn storage_toml_with(&self, extra: &str) -> String {
        let mut s = format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\n",
            self.url()
        );
        if !extra.is_empty() {
            s.push_str(extra);
            if !extra.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Fast shutdown (SIGINT: open sessions are cut, everything committed is kept); waits for
    /// the server to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = self.postmaster_pid() {
            signal("INT", pid);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait().expect("wait for PostgreSQL").is_some() {
                return;
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                self.kill_processes();
                panic!(
                    "PostgreSQL did not shut down within {STOP_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the postmaster and its children, as in a crash of the database machine;
    /// waits until they are gone. Committed transactions are recovered from the WAL by
    /// [`PgServer::start_again`].
    pub fn kill(&mut self) {
        self.kill_processes();
    }

    /// SIGSTOP to the postmaster and its children: the server hangs with its connections open
    /// (the kernel still accepts and acknowledges TCP), as a database that stopped answering.
    pub fn pause(&self) {
        for p in self.processes() {
            signal("STOP", p);
        }
    }

    /// SIGCONT after [`PgServer::pause`].
    pub fn resume(&self) {
        for p in self.processes() {
            signal("CONT", p);
        }
    }

    /// The postmaster and its children.
    fn processes(&self) -> Vec<u32> {
        let pm = self.postmaster_pid().expect("PostgreSQL is running");
        let mut all = vec![pm];
        all.extend(children_of(pm));
        all
    }

    /// Starts the server again on the same data directory and port; waits until it is ready
    /// (after a kill, that includes its crash recovery).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(log) => {
                    self.kill_processes();
                    // The port may be held a moment by a connection of the old server's, or
                    // its shared memory by a child still exiting: try again until the deadline.
                    if Instant::now() > deadline {
                        panic!("PostgreSQL did not start again; its log:\n{log}");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Runs `sql` with `psql -At` in the database `kms`; returns its output without the final
    /// newline. Panics (with psql's error) if it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("kms", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        // Trust authentication over TCP: psql needs no OS user of its own.
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
            ])
            .arg("postgres")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A command for the PostgreSQL binary `name`, as the `postgres` user when we are root.
    fn pg_command(&self, name: &str) -> Command {
        let bin = self.bindir.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the PostgreSQL log");
        let log2 = log.try_clone().expect("open the PostgreSQL log");
        let mut cmd = self.pg_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
    }

    /// Polls `pg_isready` until the server accepts connections. Err(log) if the server exits
    /// first or the time runs out.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("a spawned server");
            if let Some(status) = child.try_wait().expect("wait for postgres") {
                self.child = None;
                return Err(format!("(postgres exited: {status})\n{}", self.log()));
            }
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-q", "-t", "2", "-h", "127.0.0.1", "-U", "postgres", "-d"])
                .arg("postgres")
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .expect("run pg_isready")
                .success();
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(not ready after {READY_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The postmaster's pid, from `postmaster.pid` (under root the spawned process is
    /// `runuser`, which forks).
    fn postmaster_pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// SIGKILL to the postmaster and its children; waits until none is left.
    fn kill_processes(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The postmaster is the spawned process itself or (runuser) its child; its own
        // children (backends, checkpointer, ...) are in process groups of their own.
        let mut pids = vec![child.id()];
        if let Some(pm) = self.postmaster_pid() {
            // A stale pid file (the server never got that far) names a dead process or, at
            // worst, a process that is not ours: only signal it if it is our child's child.
            if pm == child.id() || children_of(child.id()).contains(&pm) {
                pids.push(pm);
            }
        }
        let mut all = pids.clone();
        for &p in &pids {
            all.extend(children_of(p));
        }
        all.sort_unstable();
        all.dedup();
        for &p in &all {
            signal("KILL", p);
        }
        let _ = child.wait();
        let deadline = Instant::now() + READY_TIMEOUT;
        while all.iter().any(|&p| alive(p)) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL processes {all:?} still alive after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Kill rather than stop: nothing is left to keep, and it cannot hang. The tempdir is
        // removed after this (root may remove the postgres user's files).
        self.kill_processes();
    }
}

/// PostgreSQL's binaries: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() && dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("PostgreSQL is not installed: apt-get install -y postgresql (see .ci/run)"),
    }
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port on 127.0.0.1 that is free now, below the ephemeral range (32768+) so that outgoing
/// connections do not take it between a stop and a restart. Each call tries a different one,
/// so parallel tests do not race for the same.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 15000 + ((base.wrapping_add(n.wrapping_mul(97))) % 17000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 between 15000 and 32000");
}

/// The pids whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if stat_fields(p).is_some_and(|(_, ppid)| ppid == pid) {
            out.push(p);
        }
    }
    out
}

/// A process's state letter and parent pid, from `/proc/PID/stat` (the command name may
/// hold spaces and parentheses, so parse after the last ')').
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Runs a setup command; panics with its output if it fails.
fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
