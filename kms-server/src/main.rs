//! `kms-server`: parses arguments, sets up logging, and runs the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The KMS daemon. Serves the kms.v1 gRPC API over mTLS (TLS 1.3, client certificate
/// required). It starts sealed: officers unseal it with `kms-cli operator unseal`.
#[derive(Parser)]
#[command(
    args_conflicts_with_subcommands = true,
    version,
    after_help = "Examples:\n  kms-server --config /etc/kms/config.toml\n  kms-server dev\n  kms-server dev --data-dir /tmp/kms --listen 127.0.0.1:0\n  KMS_LOG=debug kms-server --log-format json --config /etc/kms/config.toml\n  kms-server restore --config /etc/kms/config.toml --from kms.backup"
)]
struct Args {
    /// Configuration file (TOML); see kms-server/config.example.toml.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: human (text) or json (one object per line). Default: human when
    /// stderr is a terminal, json otherwise. The filter is KMS_LOG (default info); see
    /// docs/logging.md.
    #[arg(long, global = true, value_name = "FORMAT", value_enum, env = kms_server::ops::logging::FORMAT_ENV)]
    log_format: Option<kms_server::ops::logging::LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Development mode: generated certificates, auto init and unseal, one command.
    ///
    /// Writes DATA_DIR/env with KMS_ADDR, KMS_CA_CERT, KMS_CLIENT_CERT, KMS_CLIENT_KEY for
    /// kms-cli. Insecure by design: the unseal share is stored in the data directory.
    #[command(
        after_help = "Example:\n  kms-server dev --data-dir /tmp/kms --listen 127.0.0.1:0 &\n  . /tmp/kms/env && kms-cli operator status"
    )]
    Dev {
        /// Data directory (created if missing; reused across restarts).
        #[arg(long, value_name = "DIR", default_value = ".kms-dev")]
        data_dir: PathBuf,
        /// Address to listen on; port 0 picks a free port (the real one goes in DATA_DIR/env).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8200")]
        listen: SocketAddr,
        /// Record nothing in the audit log. For measuring what the audit costs
        /// (BENCHMARKS.md); only dev mode offers it.
        #[arg(long)]
        no_audit: bool,
        /// Which calls wait for their audit record to be fsynced (see `[audit] sync` in
        /// config.example.toml).
        #[arg(long, value_name = "POLICY", value_enum, default_value_t)]
        audit_sync: kms_server::audit::SyncPolicy,
        /// Also ship the audit log to a collector at ADDR (newline-delimited JSON over TLS;
        /// its certificate must be the dev server certificate, e.g. `kms-bench collector`).
        #[arg(long, value_name = "ADDR")]
        ship_to: Option<String>,
    },
    /// Restore a backup (`kms-cli operator backup`) into the empty storage of a config.
    ///
    /// Offline: run it while no server uses that storage. It refuses a storage folder that is
    /// not empty, and a file that is not a whole, intact backup (magic, version, checksum,
    /// truncation, trailing bytes); in both cases it writes nothing. Then start the server as
    /// usual: it starts sealed and unseals with the shares of the backed-up KMS.
    #[command(
        after_help = "Example:\n  kms-server restore --config /etc/kms/config.toml --from kms-2026-12-01.backup\n  kms-server --config /etc/kms/config.toml   # then unseal with the same shares"
    )]
    Restore {
        /// Configuration file (TOML) whose [storage] receives the backup.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    kms_server::ops::logging::init(args.log_format);
    // Before any secret is read or derived.
    kms_server::ops::harden::apply();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kms-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Some(Command::Dev {
                data_dir,
                listen,
                no_audit,
                audit_sync,
                ship_to,
            }) => {
                let options = kms_server::dev::Options {
                    audit: !no_audit,
                    audit_sync,
                    ship_to,
                };
                kms_server::dev::run(&data_dir, listen, options).await
            }
            Some(Command::Restore { config, from }) => {
                let done = kms_server::backup::restore(&config, &from).await?;
                println!(
                    "restored {} records into {} (backup of {}, taken at unix time {} by kms-server {}; sha256 {})",
                    done.records,
                    done.storage.display(),
                    from.display(),
                    done.created_unix,
                    done.server_version,
                    hex::encode(done.checksum)
                );
                println!("start the server and unseal it with the shares of the backed-up KMS");
                Ok(())
            }
            None => {
                let path = args.config.ok_or(
                    "--config FILE is required (or run `kms-server dev` for a local dev server)",
                )?;
                run(path).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf) -> Result<(), String> {
    let config = kms_server::Config::load(&path)?;
    // Check the TLS files before touching storage or announcing anything.
    let tls = kms_server::load_tls(&config)?;
    // A broken policy set stops the server here, naming the file and line.
    let authz = std::sync::Arc::new(kms_server::Authz::load(&config.policies)?);
    let sink = kms_server::open_audit(&config)?;
    // sled reports a damaged file in its own terms (e.g. "created using a sled version earlier
    // than 0.29"): say what it likely means and what to do (docs/corruption.md).
    let seal = kms_server::open_seal(&config).await.map_err(|e| {
        if e.contains("backup") {
            e
        } else {
            format!(
                "{e}. If files of the data directory were damaged, restore it from backup \
                 (docs/corruption.md)"
            )
        }
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read bound address: {e}"))?;
    let status = seal.status().await;
    let state = if status.initialized {
        "sealed"
    } else {
        "not initialised"
    };
    // Tests and scripts wait for this line.
    println!("kms-server listening on {addr} ({state})");
    kms_server::serve(
        listener,
        tls,
        &config,
        authz,
        sink,
        seal,
        kms_server::shutdown_signal(),
    )
    .await
}
