//! `kms-bench echo-server`: `kms.bench.v1.Echo` served exactly as kms-server serves the KMS
//! (same rustls configuration, same accept loop, same tonic server and runtime), so what it
//! costs is the transport floor under every KMS call.

use std::net::SocketAddr;
use std::path::PathBuf;

use kms_proto::bench::v1::echo_server::{Echo, EchoServer};
use kms_proto::bench::v1::{EchoRequest, EchoResponse};
use tonic::{Request, Response, Status};

/// kms-server's own TLS code: `server_config` (TLS 1.3, ring, client certificate required,
/// ALPN h2) and `incoming` (per-connection handshake tasks, `TCP_NODELAY` on each socket, the
/// principal named once per connection), so the echo figure is a fair transport floor.
use kms_server::transport::tls;

/// Where the echo server listens and which certificates it uses.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  kms-bench echo-server --tls-dir /tmp/kms/tls --listen 127.0.0.1:7001
  kms-bench echo-server --cert server.pem --key server-key.pem --client-ca ca.pem

With --tls-dir, the files are the ones `kms-server dev --data-dir D` writes to D/tls:
server.pem, server-key.pem and ca.pem (the CA that issued the dev client certificates, so
`. D/env && kms-bench run --op echo --addr https://127.0.0.1:7001` connects as is).
--cert, --key and --client-ca override single files.

The server prints `kms-bench echo-server listening on ADDR` once it accepts connections,
and stops on SIGINT or SIGTERM.")]
pub struct EchoArgs {
    /// Address to listen on; port 0 picks a free port (printed on the "listening on" line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Directory with server.pem, server-key.pem and ca.pem (e.g. DATA_DIR/tls of
    /// `kms-server dev`).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Server certificate chain (PEM); default DIR/server.pem with --tls-dir.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Server private key (PEM); default DIR/server-key.pem with --tls-dir.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that client certificates must chain to; default DIR/ca.pem
    /// with --tls-dir.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Certificate revocation list (PEM) checked against client certificates, as kms-server's
    /// `tls.crl`.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
}

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: req.into_inner().payload,
        }))
    }
}

/// Runs the echo server until SIGINT or SIGTERM.
///
/// The caller runs this on the runtime kms-server's `main` uses (tokio's default multi-thread
/// runtime), so the comparison with the KMS holds the runtime constant too.
pub async fn run(args: EchoArgs) -> Result<(), String> {
    let dir = args.tls_dir.as_deref();
    let cert = crate::tls_file(args.cert.as_deref(), dir, "server.pem", "--cert")?;
    let key = crate::tls_file(args.key.as_deref(), dir, "server-key.pem", "--key")?;
    let client_ca = crate::tls_file(args.client_ca.as_deref(), dir, "ca.pem", "--client-ca")?;
    let config = tls::server_config(&cert, &key, &client_ca, args.crl.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read bound address: {e}"))?;
    // Tests and scripts wait for this line.
    println!("kms-bench echo-server listening on {addr}");
    // Like kms-server's `serve`, minus the KMS services and the audit layer.
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(tls::incoming(listener, config), crate::shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}
