//! `kms-cli`: the command line for operators, key administrators and users of the KMS.
//!
//! Exit codes: 0 success; 1 the server refused the request; 2 bad usage or bad local input
//! (including a mistyped share or a non-base64 ciphertext: nothing was sent); 3 cannot connect
//! (address, certificates, TLS).
//!
//! Modules, one per command group: `operator` (seal, unseal, rekey), `keys` (key
//! administration), `crypto` (encrypt, decrypt, re-encrypt, data keys, random), `envelope`
//! (files of any size under a data key); `args` parses command-line values into typed ones,
//! `output` holds the tables, JSON and file-writing helpers they share.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kms_client::{Client, ClientError, ConnectOptions};

mod args;
mod audit;
mod crypto;
mod envelope;
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
                  Exit codes: 0 success, 1 the server refused, 2 bad usage or local input \
                  (nothing sent), 3 cannot connect."
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
    #[command(subcommand)]
    Operator(operator::Operator),
    /// Key administration: create, list, show, rotate, disable, revoke, delete.
    #[command(subcommand)]
    Key(keys::Key),
    #[command(flatten)]
    Crypto(crypto::Crypto),
    /// Encrypt or decrypt files of any size under a fresh data key (envelope encryption).
    #[command(subcommand)]
    Envelope(envelope::Envelope),
    /// Audit log tools: verify log files offline (no connection).
    #[command(subcommand)]
    Audit(audit::Audit),
    /// Access policies: reload them on the server; check or list them offline.
    #[command(subcommand)]
    Policy(policy::Policy),
    /// Second factor (TOTP) for operations a policy protects with `mfa = true`.
    #[command(subcommand)]
    Mfa(mfa::Mfa),
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
    /// Bad usage or bad local input, found before anything was sent: exit code 2.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// The server answered, but not with what this command needs: exit code 1.
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// Appends a hint (what to do next) to the message, keeping the exit code.
    pub(crate) fn hint(mut self, hint: &str) -> Self {
        self.message.push_str(hint);
        self
    }

    /// Whether the server refused the request (exit code 1).
    pub(crate) fn is_refusal(&self) -> bool {
        self.code == 1
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Status(_) => 1,
            ClientError::Config(_) => 2,
            ClientError::Connect { .. } => 3,
        };
        let hint = if code == 3 {
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
            eprintln!("kms-cli: cannot start: {e}");
            return ExitCode::from(1);
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
