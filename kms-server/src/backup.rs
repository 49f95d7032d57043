//! Backup (streamed to a client while serving) and offline restore into an empty store.
//!
//! A backup is a consistent snapshot of every stored record ([`crate::storage::Backend::snapshot`]) in the
//! format of [`kms_core::backup`] (`docs/backup-format.md`). Records are copied as stored:
//! barrier-sealed ciphertext and the public seal record, never plaintext key material. The
//! snapshot is one instant of the store, the same state a crash at that instant would leave,
//! so the recovery the server runs at every unseal (material without metadata erased, an
//! interrupted destruction finished) applies to a restored store as well.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kms_core::backup::{self as format, Encoder, Header};
use kms_proto::v1::BackupChunk;
use tokio::sync::mpsc;

use crate::storage::{Backend, PostgresBackend, SledBackend, Versioned};
use crate::{Config, StorageConfig};

/// Bytes per streamed message: well under gRPC's default 4 MiB message limit.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Longest the client may take to accept one chunk before the backup is stopped.
const CHUNK_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Encodes `records` as a backup file and sends it in chunks of at most [`CHUNK_BYTES`] until
/// done or the receiver goes away (the client cancelled). A failure is sent as the stream's
/// last item, so the client never mistakes a cut stream for a whole file (the checksum would
/// also tell).
pub async fn send(
    records: Vec<(String, Versioned)>,
    tx: mpsc::Sender<Result<BackupChunk, tonic::Status>>,
) {
    let total = records.len() as u64;
    match encode_and_send(records, &tx).await {
        Ok(Some(sum)) => {
            tracing::info!(records = total, sha256 = %hex::encode(sum), "backup sent");
        }
        Ok(None) => tracing::warn!("backup abandoned by the client before its end"),
        Err(e) => {
            tracing::error!(error = %e, "backup failed");
            let _ = tx.send(Err(tonic::Status::internal(e))).await;
        }
    }
}

/// Returns the checksum, or `None` if the receiver went away.
async fn encode_and_send(
    records: Vec<(String, Versioned)>,
    tx: &mpsc::Sender<Result<BackupChunk, tonic::Status>>,
) -> Result<Option<[u8; format::CHECKSUM_LEN]>, String> {
    let total = records.len() as u64;
    let header = Header {
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        records: total,
    };
    let mut buf = Vec::with_capacity(2 * CHUNK_BYTES);
    let mut enc = Encoder::start(&header, &mut buf).map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    for (key, rec) in records {
        enc.record(&key, rec.version, &rec.value, &mut buf)
            .map_err(|e| e.to_string())?;
        sent += 1;
        if buf.len() >= CHUNK_BYTES && !flush(&mut buf, total, sent, tx, false).await {
            return Ok(None);
        }
    }
    let sum = enc.finish(&mut buf).map_err(|e| e.to_string())?;
    if !flush(&mut buf, total, sent, tx, true).await {
        return Ok(None);
    }
    Ok(Some(sum))
}

/// Sends `buf` in pieces of at most [`CHUNK_BYTES`] (all of it if `last`, otherwise whole
/// pieces only); false if the receiver is gone.
async fn flush(
    buf: &mut Vec<u8>,
    total: u64,
    sent: u64,
    tx: &mpsc::Sender<Result<BackupChunk, tonic::Status>>,
    last: bool,
) -> bool {
    while buf.len() >= CHUNK_BYTES || (last && !buf.is_empty()) {
        let n = buf.len().min(CHUNK_BYTES);
        let chunk = BackupChunk {
            data: buf.drain(..n).collect(),
            records_total: total,
            records_sent: sent,
        };
        // A client that stops reading would otherwise hold the one backup slot, and the copy
        // of the store, for as long as its connection lives.
        match tokio::time::timeout(CHUNK_SEND_TIMEOUT, tx.send(Ok(chunk))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::warn!(
                    "backup stopped: the client read nothing for {} s",
                    CHUNK_SEND_TIMEOUT.as_secs()
                );
                return false;
            }
        }
    }
    true
}

/// What a restore wrote.
#[derive(Debug)]
pub struct Restored {
    pub records: u64,
    pub created_unix: u64,
    pub server_version: String,
    pub checksum: [u8; format::CHECKSUM_LEN],
    pub storage: std::path::PathBuf,
}

/// `kms-server restore`: writes the backup `from` into the storage that `config_path` names,
/// which must be empty (missing, or an empty folder). Offline: the server must not run on it.
///
/// Nothing is written unless the storage is empty and the whole file has been read and
/// verified (magic, version, every record, checksum, end of file). The records are then
/// written in one atomic batch with their stored versions, and synced.
pub async fn restore(config_path: &Path, from: &Path) -> Result<Restored, String> {
    let config = Config::load(config_path)?;
    // Where the records go: a sled folder, or a PostgreSQL database (checked empty before the
    // file is read, and again by the backend inside its one transaction).
    enum Into {
        Sled(std::path::PathBuf),
        Postgres(PostgresBackend),
    }
    let (into, place) = match &config.storage {
        StorageConfig::Sled { path } => {
            check_empty(path)?;
            (Into::Sled(path.clone()), path.display().to_string())
        }
        StorageConfig::Postgres(pg) => {
            let backend = PostgresBackend::connect(pg)
                .await
                .map_err(|e| format!("cannot open storage: {e}"))?;
            let held = backend.list("").await.map_err(|e| e.to_string())?;
            if !held.is_empty() {
                return Err(format!(
                    "the PostgreSQL database at {} already holds {} records: restore only into \
                     an empty database (point [storage] url at a new one); nothing was written",
                    pg.target(),
                    held.len()
                ));
            }
            (
                Into::Postgres(backend),
                format!("PostgreSQL at {}", pg.target()),
            )
        }
    };
    let file = std::fs::File::open(from)
        .map_err(|e| format!("cannot open backup file {}: {e}", from.display()))?;
    let verified = format::read_all(std::io::BufReader::new(file), |_| {}).map_err(|e| {
        format!(
            "backup file {} refused: {e}; nothing was written to {place}",
            from.display(),
        )
    })?;
    let records = verified.records.len() as u64;
    let backend: Box<dyn Backend> = match into {
        Into::Sled(path) => {
            // Checked again: the file may have taken a while to read. Opened only now, so a
            // refused file leaves no folder behind.
            check_empty(&path)?;
            Box::new(SledBackend::open(&path).map_err(|e| e.to_string())?)
        }
        Into::Postgres(backend) => Box::new(backend),
    };
    let rows = verified
        .records
        .into_iter()
        .map(|r| {
            (
                r.key,
                Versioned {
                    version: r.version,
                    value: r.value,
                },
            )
        })
        .collect();
    backend
        .restore(rows)
        .await
        .map_err(|e| match config.storage {
            StorageConfig::Sled { .. } => {
                format!("restore into {place} failed: {e}; remove that folder before trying again")
            }
            StorageConfig::Postgres(_) => format!("restore into {place} failed: {e}"),
        })?;
    Ok(Restored {
        records,
        created_unix: verified.header.created_unix,
        server_version: verified.header.server_version,
        checksum: verified.checksum,
        storage: place.into(),
    })
}

/// The storage folder must not exist or be empty: a restore never merges into or replaces a
/// store that holds anything.
fn check_empty(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read storage folder {}: {e}", dir.display())),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(format!(
                "storage folder {} is not empty: restore only into an empty storage folder \
                 (move it aside, or point [storage] path at a new folder); nothing was written",
                dir.display()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::{Backend, Expect};

    /// Every record of the sled store in `dir`.
    async fn stored(dir: &Path) -> Vec<(String, Versioned)> {
        SledBackend::open(dir).unwrap().snapshot().await.unwrap()
    }

    fn config(root: &Path) -> std::path::PathBuf {
        let path = root.join("config.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\npolicies = \"p\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n\
             client_ca = \"ca\"\n[storage]\nbackend = \"sled\"\npath = \"data\"\n",
        )
        .unwrap();
        path
    }

    async fn backup_of(records: Vec<(String, Versioned)>) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(send(records, tx));
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.unwrap();
            assert!(chunk.data.len() <= CHUNK_BYTES);
            out.extend_from_slice(&chunk.data);
        }
        out
    }

    /// Snapshot → chunks → file → restore gives back every record at its version, across
    /// several chunks.
    #[tokio::test]
    async fn round_trip_through_chunks() {
        let src = tempfile::tempdir().unwrap();
        let b = SledBackend::open(src.path()).unwrap();
        for i in 0..50 {
            b.put(&format!("k/{i:02}"), vec![i as u8; 5000], Expect::Any)
                .await
                .unwrap();
        }
        b.put("k/00", b"again".to_vec(), Expect::Version(1))
            .await
            .unwrap();
        let snap = b.snapshot().await.unwrap();
        let bytes = backup_of(snap.clone()).await;
        assert!(bytes.len() > 3 * CHUNK_BYTES);

        let dst = tempfile::tempdir().unwrap();
        let file = dst.path().join("backup.kmsbak");
        std::fs::write(&file, &bytes).unwrap();
        let done = restore(&config(dst.path()), &file).await.unwrap();
        assert_eq!(done.records, 50);
        let restored = stored(&dst.path().join("data")).await;
        assert_eq!(restored, snap);
        assert_eq!(restored[0].1.version, 2);
    }

    #[tokio::test]
    async fn refuses_a_non_empty_folder_and_a_bad_file_writing_nothing() {
        let dst = tempfile::tempdir().unwrap();
        let cfg = config(dst.path());
        let file = dst.path().join("backup.kmsbak");
        std::fs::write(&file, b"not a backup").unwrap();
        let e = restore(&cfg, &file).await.unwrap_err();
        assert!(e.contains("not a KMS backup file"), "{e}");
        assert!(!dst.path().join("data").exists());

        let bytes = backup_of(vec![(
            "a".into(),
            Versioned {
                version: 1,
                value: b"v".to_vec(),
            },
        )])
        .await;
        std::fs::write(&file, &bytes).unwrap();
        std::fs::create_dir(dst.path().join("data")).unwrap();
        std::fs::write(dst.path().join("data/stray"), b"").unwrap();
        let e = restore(&cfg, &file).await.unwrap_err();
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(
            std::fs::read_dir(dst.path().join("data")).unwrap().count(),
            1
        );
    }
}
