//! `kms-cli`: the command line for operators, key administrators and users of the KMS.
//!
//! Exit codes ([`exit`], README "kms-cli exit codes"): 0 success; 1 refused (by the server,
//! or a log that `audit verify` finds bad); 2 bad usage or bad local input (including a
//! mistyped share or a non-base64 ciphertext: nothing was sent); 3 cannot connect (address,
//! certificates, TLS).
//!
//! Modules, one per command group: `operator` (seal, unseal, rekey), `keys` (key
//! administration), `distribution` (key import and export, recipients), `crypto` (encrypt, decrypt, re-encrypt, data keys, random), `envelope`
//! (files of any size under a data key); `args` parses command-line values into typed ones,
//! `output` holds the tables, JSON and file-writing helpers they share; `generate` writes
//! shell completions and man pages from the command tree.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kms_client::{Client, ClientError, ConnectOptions};

mod args;
mod audit;
mod crypto;
mod distribution;
mod envelope;
mod generate;
mod keys;
mod mfa;
mod operator;
mod output;
mod policy;

use output::Format;

#[derive(Parser)]
#[command(
    version,
    about = "Command-line client for the KMS",
    after_help = "Connection settings come from flags or from KMS_ADDR, KMS_CA_CERT, KMS_CLIENT_CERT,\n\
                  KMS_CLIENT_KEY (`kms-server dev` writes them to DATA_DIR/env).\n\n\
                  Examples:\n  \
                  . .kms-dev/env && kms-cli operator status\n  \
                  kms-cli key create payments --rotation-period 90d\n  \
                  echo -n secret | kms-cli encrypt --key payments > secret.b64\n  \
                  kms-cli decrypt --in secret.b64\n  \
                  kms-cli envelope encrypt --key payments --in backup.tar --out backup.tar.kms\n\n\
                  Exit codes: 0 success, 1 refused (by the server; `audit verify`: a log does not \
                  verify), 2 bad usage or bad local input (nothing sent), 3 cannot connect.\n\n\
                  Shell completions: `kms-cli completions bash`; man pages: `kms-cli man --out DIR`."
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Output format: tables and sentences, or one JSON object.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        help_heading = "Global options"
    )]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and which certificates to present.
#[derive(Args)]
#[command(next_help_heading = "Connection (flags or environment)")]
pub(crate) struct Conn {
    /// Server address, e.g. https://127.0.0.1:8200.
    #[arg(long, global = true, env = "KMS_ADDR", value_name = "URL")]
    addr: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, global = true, env = "KMS_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, env = "KMS_CLIENT_CERT", value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, env = "KMS_CLIENT_KEY", value_name = "FILE")]
    client_key: Option<PathBuf>,
    /// TLS name to verify in the server certificate, if not the host of --addr.
    #[arg(long, global = true, env = "KMS_TLS_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
    /// The current TOTP code, for operations a policy protects with MFA.
    #[arg(long, global = true, value_name = "CODE")]
    totp: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Seal operations: init, unseal, seal, status, rekey, rotate-barrier; backups.
    #[command(
        subcommand,
        after_help = "Examples:\n  kms-cli operator status\n  kms-cli operator unseal\n  \
        kms-cli operator init --shares 5 --threshold 3"
    )]
    Operator(operator::Operator),
    /// Key administration: create, list, show, rotate, disable, revoke, delete; import and
    /// export key material.
    #[command(
        subcommand,
        after_help = "Examples:\n  kms-cli key create payments --rotation-period 90d\n  \
        kms-cli key list --format json\n  kms-cli key rotate payments\n  \
        kms-cli key import partners/acme --material material.bin"
    )]
    Key(keys::Key),
    #[command(flatten)]
    Crypto(crypto::Crypto),
    /// Encrypt or decrypt files of any size under a fresh data key (envelope encryption).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        kms-cli envelope encrypt --key backups --in db.dump --out db.dump.kms\n  \
        kms-cli envelope decrypt --in db.dump.kms --out db.dump"
    )]
    Envelope(envelope::Envelope),
    /// Audit log tools: verify log files offline (no connection); export the sealed head.
    #[command(
        subcommand,
        after_help = "Examples:\n  kms-cli audit head > head.json\n  \
        kms-cli audit verify audit.log.* audit.log --head head.json"
    )]
    Audit(audit::Audit),
    /// Access policies: reload them on the server; check or list them offline.
    #[command(
        subcommand,
        after_help = "Examples:\n  kms-cli policy reload\n  \
        kms-cli policy list --dir policies --key app/orders"
    )]
    Policy(policy::Policy),
    /// Second factor (TOTP) for operations a policy protects with `mfa = true`.
    #[command(
        subcommand,
        after_help = "Examples:\n  kms-cli mfa enroll\n  kms-cli --totp 123456 key schedule-deletion app/old"
    )]
    Mfa(mfa::Mfa),
    /// Print a shell completion script to standard output (offline).
    #[command(after_help = "Examples:\n  \
        kms-cli completions bash > /etc/bash_completion.d/kms-cli\n  \
        kms-cli completions zsh > \"${fpath[1]}/_kms-cli\"\n  \
        kms-cli completions fish > ~/.config/fish/completions/kms-cli.fish\n  \
        source <(kms-cli completions bash)      # this shell only")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write man pages: kms-cli(1) and one page per subcommand, e.g. kms-cli-key-create(1)
    /// (offline).
    #[command(after_help = "Examples:\n  \
        kms-cli man | man -l -                  # read kms-cli(1) now\n  \
        kms-cli man --out /usr/local/share/man/man1 && mandb\n\n\
        Without --out, prints kms-cli(1) to standard output. With --out, writes every page \
        (kms-cli.1, kms-cli-operator.1, kms-cli-operator-init.1, …) into DIR, creating it if \
        needed, and lists the files written.")]
    Man {
        /// The folder to write every page into (created if missing; pages are replaced).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// The exit codes, the same for every command (README "kms-cli exit codes"). Errors clap
/// finds in the command line exit 2 too, and `--help` and `--version` exit 0.
pub(crate) mod exit {
    /// The request was refused: the server answered with an error status (the message gives
    /// it) or with something this command cannot use; for `audit verify`, a log does not
    /// verify.
    pub(crate) const REFUSED: u8 = 1;
    /// Bad usage or bad local input, found before anything was sent (or, after an answer, a
    /// local file that cannot be written): flags, missing settings, unreadable files, a
    /// mistyped share, input that is not base64, a damaged envelope or backup file.
    pub(crate) const USAGE: u8 = 2;
    /// No connection to a KMS: address, TCP, TLS handshake, certificates refused.
    pub(crate) const CONNECT: u8 = 3;
}

/// A CLI failure: a one-line message with what to do next, and an exit code.
///
/// The one error type of this binary: every command returns it, and `main` prints it as
/// `kms-cli: MESSAGE` and exits with `code`. Messages never hold secrets, so `Debug` is safe.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Bad usage or bad local input, found before anything was sent: [`exit::USAGE`] (2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    /// Refused: the server answered, but not with what this command needs, or data checked
    /// offline does not verify: [`exit::REFUSED`] (1).
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self {
            code: exit::REFUSED,
            message: message.into(),
        }
    }

    /// Appends a hint (what to do next) to the message, keeping the exit code.
    pub(crate) fn hint(mut self, hint: &str) -> Self {
        self.message.push_str(hint);
        self
    }

    /// Whether the server refused the request ([`exit::REFUSED`]).
    pub(crate) fn is_refusal(&self) -> bool {
        self.code == exit::REFUSED
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Status(_) => exit::REFUSED,
            ClientError::Config(_) => exit::USAGE,
            ClientError::Connect { .. } => exit::CONNECT,
        };
        let hint = if code == exit::CONNECT {
            " (check --addr and that the server runs; check the CA, client certificate and key)"
        } else {
            ""
        };
        Self {
            code,
            message: format!("{e}{hint}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            // A local problem (threads, file descriptors): nothing was sent.
            eprintln!("kms-cli: cannot start: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kms-cli: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Each command checks its local input (files, shares, base64) before it calls `connect`,
    // so a typo costs no round trip and nothing is sent.
    match cli.command {
        Command::Operator(op) => operator::run(op, &cli.conn, cli.format).await,
        Command::Key(cmd) => keys::run(cmd, &cli.conn, cli.format).await,
        Command::Crypto(cmd) => crypto::run(cmd, &cli.conn, cli.format).await,
        Command::Envelope(cmd) => envelope::run(cmd, &cli.conn, cli.format).await,
        // Offline: reads files only, never connects.
        Command::Audit(cmd) => audit::run(cmd, &cli.conn, cli.format).await,
        Command::Policy(cmd) => policy::run(cmd, &cli.conn, cli.format).await,
        Command::Mfa(cmd) => mfa::run(cmd, &cli.conn, cli.format).await,
        // Offline: the command tree only.
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { out } => generate::man(out.as_deref(), cli.format),
    }
}

/// Connects with the settings from flags or the environment.
///
/// Returns: `usage` (2) if a setting is missing or a certificate file unreadable, the
/// connect failure (3) if no TLS connection to the server could be made.
pub(crate) async fn connect(conn: &Conn) -> Result<Client, Failure> {
    let client = Client::connect(&options(conn)?).await?;
    match &conn.totp {
        Some(code) => Ok(client.with_totp(code)?),
        None => Ok(client),
    }
}

fn options(conn: &Conn) -> Result<ConnectOptions, Failure> {
    let need = |v: bool, flag: &str, env: &str| -> Result<(), Failure> {
        if !v {
            return Err(Failure::usage(format!(
                "{flag} is not set: pass it, set {env}, or `source DATA_DIR/env` after `kms-server dev`"
            )));
        }
        Ok(())
    };
    need(conn.addr.is_some(), "--addr", "KMS_ADDR")?;
    need(conn.ca_cert.is_some(), "--ca-cert", "KMS_CA_CERT")?;
    need(
        conn.client_cert.is_some(),
        "--client-cert",
        "KMS_CLIENT_CERT",
    )?;
    need(conn.client_key.is_some(), "--client-key", "KMS_CLIENT_KEY")?;
    Ok(ConnectOptions {
        addr: conn.addr.clone().unwrap_or_default(),
        ca_cert: conn.ca_cert.clone().unwrap_or_default(),
        client_cert: conn.client_cert.clone().unwrap_or_default(),
        client_key: conn.client_key.clone().unwrap_or_default(),
        server_name: conn.server_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command's full name (`kms-cli key create`) with its `after_help`, depth first,
    /// without clap's own `help` subcommand.
    fn walk(cmd: &clap::Command, name: &str, out: &mut Vec<(String, bool, Option<String>)>) {
        let leaf = !cmd.has_subcommands();
        out.push((
            name.to_string(),
            leaf,
            cmd.get_after_help().map(|h| h.to_string()),
        ));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{name} {}", sub.get_name()), out);
        }
    }

    /// The command tree is well formed (clap's own checks: no clashing flags or names).
    #[test]
    fn command_tree_is_valid() {
        Cli::command().debug_assert();
    }

    /// Every command and subcommand's `--help` ends with at least one example that runs it:
    /// its `after_help` has "Example" and the command's full name (`kms-cli key create`).
    #[test]
    fn every_command_has_an_example() {
        let mut all = Vec::new();
        walk(&Cli::command(), "kms-cli", &mut all);
        let leaves = all.iter().filter(|(_, leaf, _)| *leaf).count();
        // operator 8, key 14, crypto 5, envelope 2, audit 3, policy 3, mfa 1, completions, man.
        assert!(leaves >= 38, "only {leaves} leaf commands found: {all:?}");
        for (name, _, help) in &all {
            let help = help
                .as_deref()
                .unwrap_or_else(|| panic!("`{name}` has no after_help"));
            assert!(
                help.contains("Example"),
                "`{name}` after_help has no example:\n{help}"
            );
            assert!(
                help.contains("kms-cli"),
                "`{name}` after_help has no kms-cli command:\n{help}"
            );
            assert!(
                help.lines()
                    .any(|l| l.ends_with(name.as_str()) || l.contains(&format!("{name} "))),
                "`{name}` after_help has no example running `{name}`:\n{help}"
            );
        }
    }

    /// Client errors map to the documented exit codes: missing or bad settings 2, no
    /// connection 3 (a server status, 1, is tested against a real server in
    /// `tests/exit_codes.rs`).
    #[test]
    fn client_errors_map_to_documented_codes() {
        assert_eq!(
            Failure::from(ClientError::Config("x".into())).code,
            exit::USAGE
        );
        let connect = Failure::from(ClientError::Connect {
            addr: "https://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(connect.code, exit::CONNECT);
        assert!(
            connect.message.contains("check --addr"),
            "{}",
            connect.message
        );
        assert_eq!(
            (exit::REFUSED, exit::USAGE, exit::CONNECT),
            (1, 2, 3),
            "the README documents these numbers"
        );
    }
}
