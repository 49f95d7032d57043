//! `kms-bench collector`: a remote audit-log collector for benchmarks, so a run can measure
//! the KMS with audit shipping on. It speaks what kms-server's shipper sends (TLS 1.3,
//! newline-delimited JSON records, one connection per round), counts the records and
//! discards them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Longest record accepted. Audit records are a few hundred bytes; a longer line is read no
/// further, counted invalid and ends the connection (the peer is not trusted to be sane).
const MAX_LINE: u64 = 1 << 20;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the collector listens and which certificate it presents.
#[derive(clap::Args)]
#[command(after_help = "\
Example (audit shipping on, for a run that measures what it costs):
  kms-server dev --data-dir D --ship-to 127.0.0.1:7002 &
  kms-bench collector --tls-dir D/tls --listen 127.0.0.1:7002 &
  . D/env && kms-bench run --op encrypt --duration 10

With --tls-dir, the files are the ones `kms-server dev --data-dir D` writes to D/tls:
server.pem and server-key.pem (the dev server certificate, for \"localhost\", which is the
name the dev shipper verifies against the dev CA). --cert and --key override single files.
No client certificate is asked for.

Output on stdout, one line each:
  kms-bench collector listening on ADDR       once bound (port 0: the real port)
  received N lines, max seq S                 after each connection closes (totals so far)
  total N lines, max seq S, I invalid         on SIGINT or SIGTERM, then it exits
N counts records that are JSON objects with a numeric `seq`; I the lines that are not
(their count is appended to the progress line when non-zero). S is 0 before any record.
The shipper delivers at least once, so N may exceed the number of distinct records.")]
pub struct CollectorArgs {
    /// Address to listen on; port 0 picks a free port (printed on the "listening on" line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7002")]
    listen: SocketAddr,
    /// Directory with server.pem and server-key.pem (e.g. DATA_DIR/tls of `kms-server dev`).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Certificate chain (PEM); default DIR/server.pem with --tls-dir.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Private key (PEM); default DIR/server-key.pem with --tls-dir.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// What has been received, over all connections.
#[derive(Default, Clone, Copy)]
struct Totals {
    /// Lines that are JSON objects with a numeric `seq`.
    lines: u64,
    /// Highest `seq` seen; 0 before any.
    max_seq: u64,
    /// Lines that are not.
    invalid: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.lines += o.lines;
        self.max_seq = self.max_seq.max(o.max_seq);
        self.invalid += o.invalid;
    }
}

/// TLS 1.3 only, ring, no client authentication: what the shipper's client expects.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in it",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not make a TLS identity: {e}"))?;
    // No session tickets: they are sent after the handshake, and the shipper never reads
    // after it, so they would still be unread when it closes. Its kernel then resets the
    // connection instead of closing it, and the reset discards the records still in our
    // receive buffer (seen: 611 of 3002 lines arrived, and the shipper counted all of them
    // as shipped). With nothing sent after the handshake, the close is an orderly FIN.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Classifies one line (without its newline).
fn tally_line(line: &[u8], t: &mut Totals) {
    let seq = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
    match seq {
        Some(s) => {
            t.lines += 1;
            t.max_seq = t.max_seq.max(s);
        }
        None => t.invalid += 1,
    }
}

/// Reads one connection to its end. Returns: what it carried (also when it broke off).
async fn read_records<R: tokio::io::AsyncRead + Unpin>(stream: R) -> Totals {
    let mut t = Totals::default();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // `take` bounds the line: a peer cannot make us buffer without limit.
        let n = match (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return t,
            Ok(n) => n,
        };
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n as u64 > MAX_LINE {
            t.invalid += 1;
            return t;
        }
        if !line.is_empty() {
            tally_line(&line, &mut t);
        }
    }
}

/// Runs the collector until SIGINT or SIGTERM, then prints the totals.
pub async fn run(args: CollectorArgs) -> Result<(), String> {
    let dir = args.tls_dir.as_deref();
    let cert = crate::tls_file(args.cert.as_deref(), dir, "server.pem", "--cert")?;
    let key = crate::tls_file(args.key.as_deref(), dir, "server-key.pem", "--key")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&cert, &key)?));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read bound address: {e}"))?;
    // Tests and scripts wait for this line.
    println!("kms-bench collector listening on {addr}");

    let totals = Arc::new(Mutex::new(Totals::default()));
    let accept = async {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                // E.g. out of file descriptors: keep serving the connections already open.
                Err(e) => {
                    eprintln!("kms-bench collector: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let totals = totals.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        eprintln!("kms-bench collector: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        eprintln!("kms-bench collector: TLS handshake timed out");
                        return;
                    }
                };
                let got = read_records(tls).await;
                // Held only to add and copy: never across an await. A poisoned lock only
                // means another connection task panicked mid-add; the counts are still usable.
                let now = {
                    let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                    t.add(got);
                    *t
                };
                let invalid = if now.invalid > 0 {
                    format!(", {} invalid", now.invalid)
                } else {
                    String::new()
                };
                println!(
                    "received {} lines, max seq {}{invalid}",
                    now.lines, now.max_seq
                );
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = crate::shutdown_signal() => {}
    }
    let t = *totals.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "total {} lines, max seq {}, {} invalid",
        t.lines, t.max_seq, t.invalid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_records_and_flags_the_rest() {
        let input: &[u8] =
            b"{\"seq\":3}\n\n{\"seq\":9,\"op\":\"x\"}\nnot json\n{\"no\":1}\n{\"seq\":4}";
        let t = read_records(input).await;
        assert_eq!((t.lines, t.max_seq, t.invalid), (3, 9, 2));
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_off() {
        let long = vec![b'x'; MAX_LINE as usize + 10];
        let t = read_records(&long[..]).await;
        assert_eq!((t.lines, t.invalid), (0, 1));
    }
}
