//! The seal: initialisation, t-of-n unseal, seal, rekey and barrier rotation.
//!
//! Stored state (see DESIGN.md §2):
//! - `core/seal` (clear, public): installation id, share-set id, n, t, the Feldman commitments,
//!   and the keyring encrypted under the root key. One record, so init, rekey and rotation
//!   each change it atomically (one compare-and-set).
//! - `sys/installation` (barrier-sealed): proves at unseal that the keyring opens records.
//!
//! The installation fingerprint ([`Fingerprint`]) names the seal configuration; a server pinned
//! to one (`[seal] installation`) refuses to unseal, rekey or initialise any other.
//!
//! The root secret and the shares are never written anywhere. While unsealed, the root key and
//! the keyring live in memory only; sealing drops them (their types zeroize on drop).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kms_core::barrier::{Keyring, RootKey};
use kms_core::shares::{self, Share, ShareSetId};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::storage::{Backend, Expect};

mod fingerprint;
mod record;
pub use fingerprint::Fingerprint;
use record::{Config, SEAL_FORMAT, SealRecord, parse_config, read_config};

pub(crate) const SEAL_PATH: &str = "core/seal";
const INSTALLATION_PATH: &str = "sys/installation";

enum State {
    Sealed { submitted: Vec<Share> },
    Unsealed { root: RootKey, keyring: Keyring },
}

struct Inner {
    config: Option<Config>,
    state: State,
    /// The installation this server is pinned to (`[seal] installation`), if any.
    pin: Option<Fingerprint>,
}

/// A snapshot of the seal state, safe to show anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub shares: u32,
    pub threshold: u32,
    pub progress: u32,
    pub submitted_indexes: Vec<u32>,
    pub share_set_id: String,
    pub barrier_term: u32,
    pub barrier_terms: u32,
    /// The installation fingerprint (`sha256:…`); empty while not initialised.
    pub installation_fingerprint: String,
}

/// What [`Seal::reload_config`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The stored configuration is the one in use.
    Unchanged,
    /// The newer configuration is in use (and its keyring, while unsealed).
    Updated,
    /// This node was unsealed and could not open the new keyring: it is sealed now.
    Sealed,
}

/// New shares handed out by init or rekey. Shown once, never stored.
pub struct NewShares {
    pub shares: Vec<Zeroizing<String>>,
    pub threshold: u8,
    pub share_set_id: ShareSetId,
    /// The installation fingerprint of the new seal configuration.
    pub fingerprint: Fingerprint,
}

/// The seal manager. All operator changes are serialised by one lock.
pub struct Seal {
    backend: Arc<dyn Backend>,
    inner: Mutex<Inner>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Seal {
    /// Loads the seal configuration. The result is always sealed.
    pub async fn load(backend: Arc<dyn Backend>) -> Result<Self, KmsError> {
        let config = read_config(backend.as_ref()).await?;
        Ok(Self {
            backend,
            inner: Mutex::new(Inner {
                config,
                state: State::Sealed {
                    submitted: Vec::new(),
                },
                pin: None,
            }),
        })
    }

    /// Pins this server to one installation (`[seal] installation`): unseal and rekey are then
    /// refused, before any share is evaluated, while the store holds a seal configuration
    /// with another fingerprint, and init is refused.
    pub fn pinned(mut self, pin: Option<Fingerprint>) -> Self {
        self.inner.get_mut().pin = pin;
        self
    }

    /// Whether the stored installation differs from the pinned one (a warning at start).
    pub async fn pin_mismatch(&self) -> Option<String> {
        check_pin(&*self.inner.lock().await)
            .err()
            .map(|e| e.to_string())
    }

    /// Name of the storage backend.
    pub fn storage_name(&self) -> &'static str {
        self.backend.name()
    }

    /// A copy of the keyring, for sealing and opening records. `Sealed` while sealed.
    pub async fn keyring(&self) -> Result<Keyring, KmsError> {
        match &self.inner.lock().await.state {
            State::Unsealed { keyring, .. } => Ok(keyring.clone()),
            State::Sealed { .. } => Err(KmsError::Sealed),
        }
    }

    /// The storage backend (records written through it must be sealed with [`Seal::keyring`]).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub async fn status(&self) -> SealStatus {
        status_of(&*self.inner.lock().await)
    }

    /// Generates the root secret, splits it and stores the public commitments and the sealed
    /// keyring. The KMS stays sealed: officers unseal it with their shares.
    pub async fn init(&self, n: u32, t: u32) -> Result<NewShares, KmsError> {
        let mut inner = self.inner.lock().await;
        if inner.config.is_some() {
            return Err(KmsError::AlreadyInitialized);
        }
        if let Some(pin) = &inner.pin {
            return Err(KmsError::FailedPrecondition(format!(
                "this server is pinned to installation {pin} ([seal] installation) and does not \
                 initialise another: the data directory or database is empty, so it was swapped \
                 or lost. Restore it from backup; only to start a new installation knowingly, \
                 remove [seal] installation from the config file and restart"
            )));
        }
        let (n, t) = share_params(n, t)?;
        let (root_secret, commitments, set_id, shares) = shares::split(n, t)?;
        let mut installation_id = vec![0u8; 16];
        kms_core::fill_random(&mut installation_id)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        let root = RootKey::derive(&root_secret, &installation_id);
        drop(root_secret);
        let now = now_unix();
        let keyring = Keyring::generate(now)?;
        let marker = keyring.seal(INSTALLATION_PATH, &installation_id)?;
        self.backend
            .put(INSTALLATION_PATH, marker, Expect::Any)
            .await?;
        let record = SealRecord {
            format: SEAL_FORMAT,
            installation_id: hex::encode(&installation_id),
            share_set_id: set_id.to_string(),
            shares: n,
            threshold: t,
            commitments: hex::encode(commitments.to_bytes()),
            keyring: hex::encode(keyring.seal_under(&root)?),
            created_unix: now,
        };
        // The seal record is the commit point of init: written once, never overwritten here.
        self.write_config(&mut inner, record, Expect::Absent)
            .await?;
        let fingerprint = stored_fingerprint(&inner)?;
        tracing::info!(shares = n, threshold = t, share_set = %set_id, installation = %fingerprint, "kms initialised");
        Ok(NewShares {
            shares: shares.iter().map(Share::to_text).collect(),
            threshold: t,
            share_set_id: set_id,
            fingerprint,
        })
    }

    /// Submits one share. It is verified against the commitments at once; a bad one is refused
    /// with its index and the progress is left unchanged. At t shares the KMS unseals.
    ///
    /// A server pinned to another installation refuses first (FAILED_PRECONDITION), before the
    /// share is parsed: nothing is evaluated or counted.
    pub async fn unseal(&self, text: &str) -> Result<SealStatus, KmsError> {
        let mut inner = self.inner.lock().await;
        // On a shared store another node may have initialised or rekeyed moments ago (before
        // this node followed the change): every share is checked against the stored
        // configuration, so a share voided by a rekey elsewhere never counts. Sealed, so
        // nothing else depends on the old one.
        if self.backend.shared()
            && matches!(inner.state, State::Sealed { .. })
            && let Some(fresh) = read_config(self.backend.as_ref()).await?
            && inner
                .config
                .as_ref()
                .is_none_or(|c| c.version < fresh.version)
        {
            if inner
                .config
                .as_ref()
                .is_none_or(|c| c.set_id != fresh.set_id)
            {
                // Shares of the old set no longer count.
                inner.state = State::Sealed {
                    submitted: Vec::new(),
                };
            }
            inner.config = Some(fresh);
        }
        check_pin(&inner)?;
        let share: Share = text.parse()?;
        let Inner { config, state, .. } = &mut *inner;
        let config = config.as_ref().ok_or(KmsError::NotInitialized)?;
        let State::Sealed { submitted } = state else {
            // Already unsealed: a late share changes nothing.
            return Ok(status_of(&inner));
        };
        let progress = format!(
            "progress unchanged: {} of {} shares",
            submitted.len(),
            config.threshold
        );
        check_share(&share, config, submitted)
            .map_err(|m| KmsError::invalid(format!("{m}; {progress}")))?;
        submitted.push(share);
        if submitted.len() < usize::from(config.threshold) {
            return Ok(status_of(&inner));
        }
        let shares = std::mem::take(submitted);
        let (root, keyring) = match self.open_keyring(config, &shares).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "shares verified but the keyring did not open");
                return Err(e);
            }
        };
        inner.state = State::Unsealed { root, keyring };
        tracing::info!("kms unsealed");
        Ok(status_of(&inner))
    }

    /// Reads the seal configuration again after another node changed it (init, rekey, barrier
    /// rotation). While unsealed, the new keyring is opened with this node's root key; if it
    /// does not open (a rekey elsewhere replaced the root key), this node seals itself: it
    /// could no longer read records sealed under a later barrier term, and its old shares are
    /// void anyway. Unseal it with the new shares.
    pub async fn reload_config(&self) -> Result<Reloaded, KmsError> {
        let mut inner = self.inner.lock().await;
        let Some(fresh) = read_config(self.backend.as_ref()).await? else {
            return Ok(Reloaded::Unchanged);
        };
        let Inner { config, state, .. } = &mut *inner;
        if config.as_ref().is_some_and(|c| c.version >= fresh.version) {
            return Ok(Reloaded::Unchanged);
        }
        let same_set = config.as_ref().is_some_and(|c| c.set_id == fresh.set_id);
        let outcome = match state {
            State::Sealed { submitted } => {
                if !same_set {
                    // Shares of the old set can no longer count towards an unseal.
                    submitted.clear();
                }
                Reloaded::Updated
            }
            State::Unsealed { root, keyring } => {
                match Keyring::open_under(root, &fresh.keyring_blob) {
                    Ok(k) => {
                        *keyring = k;
                        Reloaded::Updated
                    }
                    Err(_) => {
                        *state = State::Sealed {
                            submitted: Vec::new(),
                        };
                        tracing::warn!(
                            "kms sealed: another node replaced the shares (rekey); unseal this node with the new shares"
                        );
                        Reloaded::Sealed
                    }
                }
            }
        };
        *config = Some(fresh);
        Ok(outcome)
    }

    /// Discards the shares submitted so far.
    pub async fn reset(&self) -> Result<SealStatus, KmsError> {
        let mut inner = self.inner.lock().await;
        if inner.config.is_none() {
            return Err(KmsError::NotInitialized);
        }
        if let State::Sealed { submitted } = &mut inner.state {
            submitted.clear();
        }
        Ok(status_of(&inner))
    }

    /// Seals: drops (and so zeroizes) the root key, the keyring and any submitted shares.
    pub async fn seal(&self) -> Result<SealStatus, KmsError> {
        let mut inner = self.inner.lock().await;
        if inner.config.is_none() {
            return Err(KmsError::NotInitialized);
        }
        inner.state = State::Sealed {
            submitted: Vec::new(),
        };
        tracing::warn!("kms sealed");
        Ok(status_of(&inner))
    }

    /// Replaces the shares: needs t current shares, returns n' new ones with threshold t'.
    /// The keyring is re-encrypted under a new root key; records are untouched. Old shares stop
    /// working once this returns.
    ///
    /// The installation fingerprint changes (it covers the share set). A pinned server refuses
    /// before evaluating a share if the store is not its installation; after its own rekey it
    /// follows the new fingerprint in memory (t shares of the pinned installation vouched for
    /// it), until it restarts: its config file, and every other node's, must be updated.
    pub async fn rekey(
        &self,
        current: &[String],
        new_n: u32,
        new_t: u32,
    ) -> Result<NewShares, KmsError> {
        let (new_n, new_t) = share_params(new_n, new_t)?;
        let parsed = current
            .iter()
            .map(|s| s.parse::<Share>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.inner.lock().await;
        check_pin(&inner)?;
        let config = inner.config.as_ref().ok_or(KmsError::NotInitialized)?;
        let mut accepted: Vec<Share> = Vec::new();
        for share in parsed {
            check_share(&share, config, &accepted).map_err(KmsError::InvalidArgument)?;
            accepted.push(share);
        }
        if accepted.len() < usize::from(config.threshold) {
            return Err(KmsError::invalid(format!(
                "rekey needs {} current shares, got {}",
                config.threshold,
                accepted.len()
            )));
        }
        let (_, keyring) = self.open_keyring(config, &accepted).await?;
        let (root_secret, commitments, set_id, shares) = shares::split(new_n, new_t)?;
        let root = RootKey::derive(&root_secret, &config.installation_id);
        drop(root_secret);
        let record = SealRecord {
            format: SEAL_FORMAT,
            installation_id: hex::encode(&config.installation_id),
            share_set_id: set_id.to_string(),
            shares: new_n,
            threshold: new_t,
            commitments: hex::encode(commitments.to_bytes()),
            keyring: hex::encode(keyring.seal_under(&root)?),
            created_unix: config.created_unix,
        };
        let expect = Expect::Version(config.version);
        self.write_config(&mut inner, record, expect).await?;
        match &mut inner.state {
            // Shares submitted towards an unseal belong to the old set: drop them.
            State::Sealed { submitted } => submitted.clear(),
            State::Unsealed { root: r, .. } => *r = root,
        }
        let fingerprint = stored_fingerprint(&inner)?;
        tracing::warn!(shares = new_n, threshold = new_t, share_set = %set_id, installation = %fingerprint, "kms rekeyed");
        if let Some(pin) = inner.pin.as_mut() {
            let old = std::mem::replace(pin, fingerprint);
            tracing::warn!(
                pinned = %old,
                installation = %fingerprint,
                "the installation fingerprint changed with the rekey: set [seal] installation = \"{fingerprint}\" in the config file of every node before it next starts"
            );
        }
        Ok(NewShares {
            shares: shares.iter().map(Share::to_text).collect(),
            threshold: new_t,
            share_set_id: set_id,
            fingerprint,
        })
    }

    /// Adds a barrier-key term. Needs the KMS unsealed.
    pub async fn rotate_barrier(&self) -> Result<(u32, u32), KmsError> {
        let mut inner = self.inner.lock().await;
        let Inner { config, state, .. } = &mut *inner;
        let config = config.as_ref().ok_or(KmsError::NotInitialized)?;
        let State::Unsealed { root, keyring } = state else {
            return Err(KmsError::Sealed);
        };
        let mut next = keyring.clone();
        let term = next.rotate(now_unix())?;
        let record = SealRecord {
            format: SEAL_FORMAT,
            installation_id: hex::encode(&config.installation_id),
            share_set_id: config.set_id.to_string(),
            shares: config.shares,
            threshold: config.threshold,
            commitments: hex::encode(config.commitments.to_bytes()),
            keyring: hex::encode(next.seal_under(root)?),
            created_unix: config.created_unix,
        };
        let expect = Expect::Version(config.version);
        let terms = next.term_count() as u32;
        // Only switch the in-memory keyring once the new one is durable.
        self.write_config(&mut inner, record, expect).await?;
        if let State::Unsealed { keyring, .. } = &mut inner.state {
            *keyring = next;
        }
        tracing::info!(term, "barrier key rotated");
        Ok((term, terms))
    }

    /// Combines verified shares, derives the root key and opens the keyring; proves the keyring
    /// opens a stored record before anything is believed.
    async fn open_keyring(
        &self,
        config: &Config,
        shares: &[Share],
    ) -> Result<(RootKey, Keyring), KmsError> {
        let secret = shares::combine(shares, &config.commitments)?;
        let root = RootKey::derive(&secret, &config.installation_id);
        drop(secret);
        let keyring = Keyring::open_under(&root, &config.keyring_blob).map_err(|_| {
            KmsError::FailedPrecondition(
                "the shares verified but did not open the keyring: the stored seal configuration \
                 is damaged or was altered; progress reset. Restore the data directory from backup"
                    .into(),
            )
        })?;
        let damaged = |why: &str| {
            KmsError::DataLoss(format!(
                "the installation marker ({INSTALLATION_PATH}) {why}: the data directory is \
                 damaged; progress reset. Restore the data directory from backup"
            ))
        };
        let marker = match self.backend.get(INSTALLATION_PATH).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(damaged("is missing")),
            Err(crate::storage::StorageError::Corrupt(_)) => return Err(damaged("is corrupt")),
            Err(e) => return Err(e.into()),
        };
        let id = keyring
            .open(INSTALLATION_PATH, &marker.value)
            .map_err(|_| damaged("failed its integrity check"))?;
        if id.as_slice() != config.installation_id.as_slice() {
            return Err(damaged("does not match the seal configuration"));
        }
        Ok((root, keyring))
    }

    async fn write_config(
        &self,
        inner: &mut Inner,
        record: SealRecord,
        expect: Expect,
    ) -> Result<(), KmsError> {
        let bytes = serde_json::to_vec(&record).map_err(|e| KmsError::Internal(e.to_string()))?;
        let version = self.backend.put(SEAL_PATH, bytes, expect).await?;
        inner.config = Some(parse_config(record, version)?);
        Ok(())
    }
}

/// Checks one share before it counts: right share set, valid against the commitments, not a
/// duplicate. The error message names the share by index.
fn check_share(share: &Share, config: &Config, submitted: &[Share]) -> Result<(), String> {
    let i = share.index();
    if share.set_id() != config.set_id {
        return Err(format!(
            "share {i} belongs to share set {} but this kms uses share set {}: it is from another \
             installation or from before a rekey",
            share.set_id(),
            config.set_id
        ));
    }
    if u32::from(i) > u32::from(config.shares) {
        return Err(format!(
            "share {i} does not exist: this kms has {} shares",
            config.shares
        ));
    }
    if submitted.iter().any(|s| s.index() == i) {
        return Err(format!("share {i} was already submitted"));
    }
    shares::verify(share, &config.commitments).map_err(|_| {
        format!(
            "share {i} does not verify against this kms's commitments: it is wrong or corrupted"
        )
    })
}

/// Refuses a store that holds another installation than the pinned one. Passes when not
/// pinned or not initialised (init refuses on its own; unseal then says "not initialised").
fn check_pin(inner: &Inner) -> Result<(), KmsError> {
    let (Some(pin), Some(config)) = (&inner.pin, &inner.config) else {
        return Ok(());
    };
    if config.fingerprint == *pin {
        return Ok(());
    }
    Err(KmsError::FailedPrecondition(format!(
        "the data directory or database holds another installation than the one this server is \
         pinned to: it holds installation {}, [seal] installation is {pin}. The store was \
         replaced or swapped; or, on a shared database, another node rekeyed it (then set \
         [seal] installation to the new fingerprint and restart). No share was evaluated or \
         counted",
        config.fingerprint
    )))
}

/// The fingerprint of the configuration just written.
fn stored_fingerprint(inner: &Inner) -> Result<Fingerprint, KmsError> {
    inner
        .config
        .as_ref()
        .map(|c| c.fingerprint)
        .ok_or_else(|| KmsError::Internal("no seal configuration after writing it".into()))
}

fn share_params(n: u32, t: u32) -> Result<(u8, u8), KmsError> {
    let n8 = u8::try_from(n).map_err(|_| KmsError::invalid("shares must be between 1 and 32"))?;
    let t8 =
        u8::try_from(t).map_err(|_| KmsError::invalid("threshold must be between 1 and shares"))?;
    Ok((n8, t8))
}

fn status_of(inner: &Inner) -> SealStatus {
    let Some(config) = &inner.config else {
        return SealStatus {
            initialized: false,
            sealed: true,
            shares: 0,
            threshold: 0,
            progress: 0,
            submitted_indexes: Vec::new(),
            share_set_id: String::new(),
            barrier_term: 0,
            barrier_terms: 0,
            installation_fingerprint: String::new(),
        };
    };
    let (sealed, indexes, term, terms) = match &inner.state {
        State::Sealed { submitted } => (
            true,
            submitted
                .iter()
                .map(|s| u32::from(s.index()))
                .collect::<Vec<_>>(),
            0,
            0,
        ),
        State::Unsealed { keyring, .. } => (
            false,
            Vec::new(),
            keyring.active_term(),
            keyring.term_count() as u32,
        ),
    };
    SealStatus {
        initialized: true,
        sealed,
        shares: u32::from(config.shares),
        threshold: u32::from(config.threshold),
        progress: indexes.len() as u32,
        submitted_indexes: indexes,
        share_set_id: config.set_id.to_string(),
        barrier_term: term,
        barrier_terms: terms,
        installation_fingerprint: config.fingerprint.to_string(),
    }
}
