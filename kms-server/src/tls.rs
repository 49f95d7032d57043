//! mTLS: TLS 1.3 only, a client certificate from the configured CA required on every
//! connection, and an accept loop that hands tonic only fully authenticated streams.

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
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its handshake by then is dropped, so silent peers cannot
/// hold sockets open for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Who is on the other end of a connection: named once, after the handshake verified the
/// client certificate, rather than by parsing the certificate on every request. Requests find
/// it in their extensions (tonic's connect info).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The principal (see [`crate::principal::name_of`]); None if the certificate names none.
    pub principal: Option<Arc<str>>,
    /// The peer's socket address, formatted once (audit records, rate limits).
    pub addr_text: Arc<str>,
}

/// A verified mTLS connection and its [`Peer`].
pub struct Conn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
/// verification, succeeded.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
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
            // tonic ignores its own nodelay setting with serve_with_incoming.
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let principal = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::principal::name_of(c.as_ref()).ok())
                            .map(Arc::from);
                        let peer = Peer {
                            principal,
                            addr_text: Arc::from(peer.to_string()),
                        };
                        let _ = tx.send(Ok(Conn { stream, peer })).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
