//! mTLS: TLS 1.3 only, a client certificate from the configured CA required on every
//! connection, and an accept loop that hands tonic only fully authenticated streams.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::call::Peer;
use crate::transport::LimitsConfig;

/// At most one "connection limit reached" warning per this period, so a flood of refused
/// connections cannot flood the log too.
const LIMIT_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Builds the rustls server configuration: TLS 1.3, ring provider, client auth required.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    crl: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(client_ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("bad client CA certificate in {}: {e}", client_ca.display()))?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = crl {
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .map_err(|e| format!("cannot read CRL {}: {e}", crl.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM CRL in {}: {e}", crl.display()))?;
        if crls.is_empty() {
            return Err(format!("no CRL found in {}", crl.display()));
        }
        builder = builder.with_crls(crls);
    }
    let verifier = builder
        .build()
        .map_err(|e| format!("cannot build client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("server certificate and key do not match or are invalid: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// A verified mTLS connection and its [`Peer`].
///
/// It holds one of the `max_connections` slots until it is dropped, and fails its next read
/// once nothing has been read from the peer for the idle timeout.
pub struct Conn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_read: Instant,
    /// Fires at `last_read + idle_timeout` or later; moved forward lazily, when it fires, so
    /// a read costs a clock read rather than a timer update.
    idle: Pin<Box<Sleep>>,
}

impl Conn {
    /// Returns true once the peer has sent nothing for the idle timeout; otherwise arms the
    /// timer (with `cx`) for the current deadline.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_read + self.idle_timeout;
            if deadline <= Instant::now() {
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            // hyper always has a read pending on a live connection, so this is where silence
            // is noticed; the error makes hyper drop the connection.
            Poll::Pending if self.idle_expired(cx) => {
                tracing::info!(peer = %self.peer.addr_text, "idle connection closed");
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections, runs each TLS handshake in its own task (a slow client does not
/// block others) and yields only the streams whose handshake, including client certificate
/// verification, succeeded. With the default [`LimitsConfig`]; see [`incoming_with`].
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, std::io::Error>> {
    incoming_with(listener, config, &LimitsConfig::default())
}

/// Like [`incoming`], with the connection limits of `limits`:
/// - at most `max_connections` connections at once, handshakes included; a connection beyond
///   that is closed as soon as it is accepted (the client fails fast and may retry) and a
///   warning is logged at most every 10 s with the number refused;
/// - a handshake not done within `handshake_timeout_secs` is dropped;
/// - an established connection silent for `idle_timeout_secs` is closed (see [`Conn`]).
pub fn incoming_with(
    listener: TcpListener,
    config: rustls::ServerConfig,
    limits: &LimitsConfig,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max_connections = limits.max_connections;
    let handshake_timeout = limits.handshake_timeout();
    let idle_timeout = limits.idle_timeout();
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        let mut last_warning: Option<Instant> = None;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed rather than queued: a queued client would wait with no sign of why,
                // and the backlog would keep growing under a flood.
                refused += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= LIMIT_WARNING_PERIOD) {
                    tracing::warn!(
                        max_connections,
                        refused,
                        "connection limit reached: new connections are closed ([limits] max_connections)"
                    );
                    last_warning = Some(Instant::now());
                    refused = 0;
                }
                drop(tcp);
                continue;
            };
            // tonic ignores its own nodelay setting with serve_with_incoming.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // Pinned here, not inside the timeout, so a timed-out handshake's socket is
                // closed after its log line: whoever sees the close can find the line.
                let mut accept = std::pin::pin!(acceptor.accept(tcp));
                match tokio::time::timeout(handshake_timeout, accept.as_mut()).await {
                    Ok(Ok(stream)) => {
                        let principal = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::access::principal::name_of(c.as_ref()).ok())
                            .map(Arc::from);
                        let peer = Peer {
                            principal,
                            addr_text: Arc::from(peer.to_string()),
                        };
                        let now = Instant::now();
                        let conn = Conn {
                            stream,
                            peer,
                            _slot: slot,
                            idle_timeout,
                            last_read: now,
                            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
