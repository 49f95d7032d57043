//! The stored seal configuration (`core/seal`, clear and public): its JSON form, and how it is
//! read and checked. A missing or damaged record stops the start (DATA_LOSS).

use kms_core::shares::{Commitments, ShareSetId};
use serde::{Deserialize, Serialize};

use super::{Fingerprint, INSTALLATION_PATH, SEAL_PATH};
use crate::error::KmsError;
use crate::storage::Backend;

pub(super) const SEAL_FORMAT: u32 = 1;

/// The public seal configuration as stored in `core/seal`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SealRecord {
    pub(super) format: u32,
    pub(super) installation_id: String,
    pub(super) share_set_id: String,
    pub(super) shares: u8,
    pub(super) threshold: u8,
    pub(super) commitments: String,
    /// The keyring, encrypted under the root key (hex).
    pub(super) keyring: String,
    pub(super) created_unix: u64,
}

/// The parsed seal configuration and the storage version it was read at.
pub(super) struct Config {
    pub(super) installation_id: Vec<u8>,
    pub(super) set_id: ShareSetId,
    pub(super) shares: u8,
    pub(super) threshold: u8,
    pub(super) commitments: Commitments,
    pub(super) keyring_blob: Vec<u8>,
    pub(super) created_unix: u64,
    pub(super) version: u64,
    /// Of the installation id, share-set id and commitments as stored.
    pub(super) fingerprint: Fingerprint,
}

pub(super) async fn read_config(backend: &dyn Backend) -> Result<Option<Config>, KmsError> {
    let raw = match backend.get(SEAL_PATH).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            // Not initialised, unless other records exist: then the seal record was lost, and
            // offering init would let a new installation be written over the old one's records.
            // A lone marker is what an interrupted init leaves, and init overwrites it.
            let mut others = backend.list("").await?;
            others.retain(|p| p.as_str() != INSTALLATION_PATH);
            if let Some(p) = others.first() {
                return Err(KmsError::DataLoss(format!(
                    "the seal configuration ({SEAL_PATH}) is missing but the data directory holds \
                     {} other record(s), e.g. {p}: it is damaged; restore it from backup",
                    others.len()
                )));
            }
            return Ok(None);
        }
        Err(crate::storage::StorageError::Corrupt(_)) => {
            return Err(KmsError::DataLoss(format!(
                "the stored seal configuration ({SEAL_PATH}) is corrupt: the data directory is \
                 damaged; restore it from backup"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let record: SealRecord = serde_json::from_slice(&raw.value).map_err(|e| {
        KmsError::DataLoss(format!(
            "the stored seal configuration ({SEAL_PATH}) is unreadable ({e}): the data directory \
             is damaged; restore it from backup"
        ))
    })?;
    parse_config(record, raw.version).map(Some)
}

pub(super) fn parse_config(record: SealRecord, version: u64) -> Result<Config, KmsError> {
    let bad = |what: &str| {
        KmsError::DataLoss(format!(
            "the stored seal configuration ({SEAL_PATH}) has a bad {what}: the data directory is \
             damaged; restore it from backup"
        ))
    };
    if record.format != SEAL_FORMAT {
        return Err(bad("format version"));
    }
    let set = hex::decode(&record.share_set_id).map_err(|_| bad("share set id"))?;
    let set: [u8; 4] = set.try_into().map_err(|_| bad("share set id"))?;
    let commitment_bytes = hex::decode(&record.commitments).map_err(|_| bad("commitments"))?;
    let commitments = Commitments::from_bytes(&commitment_bytes).map_err(|_| bad("commitments"))?;
    if commitments.threshold() != record.threshold || record.threshold > record.shares {
        return Err(bad("threshold"));
    }
    let installation_id =
        hex::decode(&record.installation_id).map_err(|_| bad("installation id"))?;
    Ok(Config {
        fingerprint: Fingerprint::of(&installation_id, &set, &commitment_bytes),
        installation_id,
        set_id: ShareSetId(set),
        shares: record.shares,
        threshold: record.threshold,
        commitments,
        keyring_blob: hex::decode(&record.keyring).map_err(|_| bad("keyring"))?,
        created_unix: record.created_unix,
        version,
    })
}
