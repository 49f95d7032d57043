//! Log shipping: streams the audit log to a remote collector as newline-delimited JSON over
//! TLS (RFC 5424 syslog framing is not offered yet).
//!
//! The local log is the spool: nothing is lost while the collector is down, the shipper
//! catches up when it comes back. Delivery is at least once, in sequence order: the last
//! shipped sequence number is kept in `<log>.shipped` after each batch, so after a crash a
//! batch may be sent twice; collectors de-duplicate by `seq` (and `node`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the collector has to read a batch and close the connection.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to ship, and how to authenticate (the `[audit.ship]` config section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipConfig {
    /// The collector, `host:port`.
    pub addr: String,
    /// The name its TLS certificate must carry.
    pub server_name: String,
    /// CA certificate(s) (PEM) the collector's certificate must chain to.
    pub ca: PathBuf,
    /// Optional client certificate and key (PEM), if the collector wants mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl ShipConfig {
    pub(crate) fn resolve(&mut self, resolve: impl Fn(&mut PathBuf)) {
        resolve(&mut self.ca);
        if let Some(p) = &mut self.client_cert {
            resolve(p);
        }
        if let Some(p) = &mut self.client_key {
            resolve(p);
        }
    }
}

fn tls_config(cfg: &ShipConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cfg.ca)
        .map_err(|e| format!("audit shipping CA {}: {e}", cfg.ca.display()))?
    {
        let c = c.map_err(|e| format!("audit shipping CA {}: {e}", cfg.ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("audit shipping CA {}: {e}", cfg.ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Checks the shipping settings at start (so a typo stops the server, not the shipper).
pub fn check(cfg: &ShipConfig) -> Result<(), String> {
    tls_config(cfg).map(drop)?;
    ServerName::try_from(cfg.server_name.clone())
        .map(drop)
        .map_err(|e| format!("audit shipping server_name {}: {e}", cfg.server_name))
}

fn state_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".shipped");
    PathBuf::from(p)
}

/// Where shipping stands in the current log file: its inode and the offset just after the
/// last shipped line. Lets each round read only what was appended since the last one.
#[derive(Clone, Copy)]
struct Cursor {
    ino: u64,
    offset: u64,
}

/// What to ship: complete new lines (text ending in a newline), the sequence number of the
/// last one, and the cursor after them.
struct Pending {
    text: String,
    last: u64,
    cursor: Option<Cursor>,
    /// The first missing sequence number, if this round stopped at a gap.
    gap: Option<u64>,
}

/// New complete lines since `cursor`, when it still points into the current file; else the
/// full scan of [`pending`].
fn pending_since(
    log: &Path,
    after: u64,
    cursor: Option<Cursor>,
    tolerated_gap: Option<u64>,
) -> Result<Pending, String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let io = |e: std::io::Error| format!("{}: {e}", log.display());
    let mut file = std::fs::File::open(log).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let Some(c) = cursor.filter(|c| c.ino == meta.ino() && c.offset <= meta.len()) else {
        // First round, or the file was rotated or replaced: scan everything once.
        let (mut lines, offset) = pending(log, after)?;
        // Sequence numbers are consecutive within a chain. A gap usually means a rotation
        // happened while the files were read (the rotated file's tail was missed): ship up
        // to the gap and scan again next round. The same gap twice in a row is real (rotated
        // files removed, or a restarted chain): ship past it, with a warning.
        let gap = lines
            .iter()
            .zip(after + 1..)
            .position(|((seq, _), expected)| *seq != expected)
            .map(|at| (at, after + 1 + at as u64));
        let gap = match gap {
            Some((_, missing)) if tolerated_gap == Some(missing) => {
                tracing::warn!(
                    missing,
                    "audit records missing from the local log; shipping past them"
                );
                None
            }
            Some((at, missing)) => {
                lines.truncate(at);
                Some(missing)
            }
            None => None,
        };
        let last = lines.last().map(|(s, _)| *s).unwrap_or(after);
        let mut text = String::new();
        for (_, l) in &lines {
            text.push_str(l);
            text.push('\n');
        }
        return Ok(Pending {
            text,
            last,
            cursor: gap.is_none().then_some(Cursor {
                ino: meta.ino(),
                offset,
            }),
            gap,
        });
    };
    file.seek(SeekFrom::Start(c.offset)).map_err(io)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    // A line still being written is left for the next round.
    text.truncate(text.rfind('\n').map(|i| i + 1).unwrap_or(0));
    let last = text.lines().last().and_then(seq_of).unwrap_or(after);
    let offset = c.offset + text.len() as u64;
    Ok(Pending {
        text,
        last,
        cursor: Some(Cursor { ino: c.ino, offset }),
        gap: None,
    })
}

/// The sequence number of a record line. Records start with `{"seq":N,` (the field order
/// of `kms_core::audit::Record`), so catching up on a large log parses no JSON; any other
/// line is parsed in full.
fn seq_of(line: &str) -> Option<u64> {
    let fast = line
        .strip_prefix("{\"seq\":")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(n, _)| n.parse().ok());
    fast.or_else(|| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["seq"].as_u64())
    })
}

/// Complete lines of the log (rotated files, then the current one) with a sequence number
/// above `after`, in order; and the length of the current file's complete lines.
fn pending(log: &Path, after: u64) -> Result<(Vec<(u64, String)>, u64), String> {
    let dir = log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{base}.");
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let last: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((last, e.path()))
        })
        .filter(|(last, _)| *last > after)
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    let mut out = Vec::new();
    let mut complete = 0;
    for f in files {
        let mut text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        // A line still being written is left for the next round.
        text.truncate(text.rfind('\n').map(|i| i + 1).unwrap_or(0));
        complete = text.len() as u64;
        for line in text.lines() {
            let seq = seq_of(line);
            if let Some(seq) = seq.filter(|s| *s > after) {
                out.push((seq, line.to_string()));
            }
        }
    }
    Ok((out, complete))
}

async fn ship_once(
    cfg: &ShipConfig,
    tls: &tokio_rustls::TlsConnector,
    log: &Path,
    shipped: &mut u64,
    cursor: &mut Option<Cursor>,
    gap: &mut Option<u64>,
) -> Result<(), String> {
    // File reads block: off the async workers.
    let (path, after, at, tolerated) = (log.to_path_buf(), *shipped, *cursor, *gap);
    let new = tokio::task::spawn_blocking(move || pending_since(&path, after, at, tolerated))
        .await
        .map_err(|e| e.to_string())??;
    *gap = new.gap;
    if new.text.is_empty() {
        *cursor = new.cursor;
        return Ok(());
    }
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&cfg.addr),
    )
    .await
    .map_err(|_| format!("connecting to {} timed out", cfg.addr))?
    .map_err(|e| format!("cannot connect to {}: {e}", cfg.addr))?;
    let name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| e.to_string())?;
    let mut stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {}: {e}", cfg.addr))?;
    stream
        .write_all(new.text.as_bytes())
        .await
        .map_err(|e| format!("sending to {}: {e}", cfg.addr))?;
    stream.flush().await.map_err(|e| e.to_string())?;
    stream
        .shutdown()
        .await
        .map_err(|e| format!("closing the connection to {}: {e}", cfg.addr))?;
    // Shipped only once the collector has read everything and closed its side. Closing with
    // unread bytes from it (TLS 1.3 session tickets) would make our kernel reset the
    // connection and discard what the collector had not read yet.
    let mut drain = [0u8; 4096];
    let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
        loop {
            match stream.read(&mut drain).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A collector may close without a TLS close_notify: still a clean close.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match confirmed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{} did not confirm the batch: {e}", cfg.addr)),
        Err(_) => {
            return Err(format!(
                "{} did not close the connection within {} s after the batch",
                cfg.addr,
                CONFIRM_TIMEOUT.as_secs()
            ));
        }
    }
    crate::storage::write_file(&state_path(log), new.last.to_string().as_bytes(), 0o600)?;
    *shipped = new.last;
    *cursor = new.cursor;
    Ok(())
}

/// Ships forever: every second, whatever is new; after a failure, retries with a growing
/// pause (up to 30 s).
pub async fn run(cfg: ShipConfig, log: PathBuf) {
    let tls = match tls_config(&cfg) {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "audit shipping disabled");
            return;
        }
    };
    let mut shipped: u64 = std::fs::read_to_string(state_path(&log))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut pause = Duration::from_secs(1);
    let mut cursor = None;
    let mut gap = None;
    loop {
        match ship_once(&cfg, &tls, &log, &mut shipped, &mut cursor, &mut gap).await {
            Ok(()) => pause = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "audit shipping failed; the local log keeps everything, retrying");
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_of_reads_the_prefix_and_falls_back_to_json() {
        assert_eq!(seq_of(r#"{"seq":42,"time":"x"}"#), Some(42));
        assert_eq!(seq_of(r#"{"time":"x","seq":7}"#), Some(7));
        assert_eq!(seq_of(r#"{"seq":"no","time":"x"}"#), None);
        assert_eq!(seq_of("torn {\"seq"), None);
    }
}
