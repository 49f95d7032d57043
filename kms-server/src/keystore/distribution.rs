//! Key distribution in the keystore: import tokens with their wrapping keys (bring your own
//! key), imports, and exports [RègleAcheminementCléCentral-1, RègleInjectionClé].
//!
//! An import token names a storage record `imports/<token>`, sealed under the barrier like
//! key material: the key name it was issued for, when it expires, and the RSA wrapping key's
//! private half (PKCS#8) until the token is used. A use rewrites the record without the private
//! key, by compare-and-set (of two concurrent uses one wins) and durably, *before* anything is
//! decrypted: a wrapping key answers at most once, whatever the outcome, so it can never serve
//! as a decryption oracle (Bleichenbacher/Manger-style attacks need many answers). Checks that
//! decrypt nothing (name, expiry, blob lengths, the key's state) come first and leave the token
//! usable. Expired records are purged when new parameters are issued.

use super::*;

use kms_core::wrap::{self, Recipient, WrapError, WrappingKey};
use zeroize::{Zeroize, Zeroizing};

use crate::storage::Expect;

/// Where import token records live.
pub(super) const IMPORTS: &str = "imports/";

/// What GetImportParameters returns.
pub struct ImportParams {
    pub public_der: Vec<u8>,
    pub public_pem: String,
    pub token: String,
    pub expires: u64,
}

/// What an import creating a key sets; must be empty when the key exists.
pub struct NewKeyFields {
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub exportable: bool,
}

/// The sealed record behind an import token.
#[derive(serde::Serialize, serde::Deserialize)]
struct TokenRecord {
    name: String,
    created: u64,
    expires: u64,
    /// The wrapping key, PKCS#8 DER in hex; gone once the token is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapping_key: Option<String>,
    /// When the token was used (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used: Option<u64>,
}

impl Drop for TokenRecord {
    fn drop(&mut self) {
        if let Some(k) = &mut self.wrapping_key {
            k.zeroize();
        }
    }
}

/// The record path of `token`, or INVALID_ARGUMENT if it cannot be a token (32 hex digits).
/// The path holds a hash of the token, not the token: storage rows, change feeds, backups and
/// storage error messages never show a usable token.
fn token_path(token: &str) -> Result<String, KmsError> {
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unknown_token());
    }
    let digest = wrap::token_digest(&token.to_ascii_lowercase());
    Ok(format!("{IMPORTS}{}", hex::encode(digest)))
}

/// The most import tokens outstanding (issued, not expired) at once: each holds an RSA private
/// key in storage and costs a key generation, so a principal with the `import` grant cannot
/// fill storage.
const MAX_OUTSTANDING_TOKENS: usize = 1000;

fn unknown_token() -> KmsError {
    KmsError::invalid(
        "the import token is unknown, or expired and purged: get new parameters (`kms-cli key import-params NAME`)",
    )
}

fn wrap_error(e: WrapError) -> KmsError {
    match e {
        WrapError::Internal(what) => KmsError::Internal(what.into()),
        other => KmsError::invalid(other.to_string()),
    }
}

/// The hex fingerprint of imported material as version `v` of key `id`.
fn fingerprint_hex(id: &KeyId, v: u32, material: &Secret32) -> String {
    hex::encode(wrap::fingerprint(&id.0, v, material))
}

/// Whether `stored` (hex) is the fingerprint of `material` as version `v` of key `id`,
/// compared in constant time.
fn same_material(stored: &str, id: &KeyId, v: u32, material: &Secret32) -> bool {
    let Ok(stored) = hex::decode(stored) else {
        return false;
    };
    wrap::same_fingerprint(&stored, &wrap::fingerprint(&id.0, v, material))
}

impl Keystore {
    /// A fresh RSA-3072 wrapping key and single-use import token for key `name`, valid for
    /// `[keys] import_token_ttl_secs` (24 hours by default).
    pub async fn import_params(&self, name: &KeyName) -> Result<ImportParams, KmsError> {
        let cache = self.serving()?;
        let existing = read(&cache.by_name).get(name).cloned();
        if let Some(k) = existing {
            precheck_existing(&k.meta, None)?;
        }
        let now = now_unix();
        let keyring = self.seal.keyring().await?;
        let outstanding = self.purge_expired_tokens(&keyring, now).await;
        if outstanding >= MAX_OUTSTANDING_TOKENS {
            return Err(KmsError::ResourceExhausted(format!(
                "{outstanding} import tokens are outstanding, the limit is {MAX_OUTSTANDING_TOKENS}: use or let expire the ones issued (they last [keys] import_token_ttl_secs)"
            )));
        }
        // RSA key generation takes tens of milliseconds: off the async workers.
        let wk = tokio::task::spawn_blocking(WrappingKey::generate)
            .await
            .map_err(|e| KmsError::Internal(format!("wrapping key generation failed: {e}")))?
            .map_err(wrap_error)?;
        let mut raw = [0u8; 16];
        kms_core::fill_random(&mut raw).map_err(|e| KmsError::Internal(e.to_string()))?;
        let token = hex::encode(raw);
        let expires = now.saturating_add(self.settings.import_token_ttl_secs);
        let pkcs8 = wk.pkcs8().map_err(wrap_error)?;
        let record = TokenRecord {
            name: name.to_string(),
            created: now,
            expires,
            wrapping_key: Some(hex::encode(&*pkcs8)),
            used: None,
        };
        let path = token_path(&token)?;
        self.seal
            .backend()
            .put(
                &path,
                seal_record(&keyring, &path, &record)?,
                Expect::Absent,
            )
            .await?;
        Ok(ImportParams {
            public_der: wk.public_der().map_err(wrap_error)?,
            public_pem: wk.public_pem().map_err(wrap_error)?,
            token,
            expires,
        })
    }

    /// Imports wrapped material into key `name`: a new key (origin external), a new version
    /// of an imported key, or the restoration of a destroyed imported version with the same
    /// material. Every refusal is INVALID_ARGUMENT or FAILED_PRECONDITION with nothing stored
    /// (beyond the token being used up, once decryption was attempted).
    pub async fn import_material(
        &self,
        name: KeyName,
        token: &str,
        wrapped: Vec<u8>,
        new: NewKeyFields,
    ) -> Result<(KeyMeta, u32), KmsError> {
        let cache = self.serving()?;
        let path = token_path(token)?;
        let keyring = self.seal.keyring().await?;
        let backend = self.seal.backend().clone();
        let Some(stored) = backend.get(&path).await? else {
            return Err(unknown_token());
        };
        let record = open_record(&keyring, &path, &stored.value)?;
        let now = now_unix();
        check_token(&record, &name, now)?;
        let der = record
            .wrapping_key
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| KmsError::Internal("import token record without its key".into()))?;
        let wk = WrappingKey::from_pkcs8(&der).map_err(wrap_error)?;
        wk.check_shape(&wrapped).map_err(wrap_error)?;
        let existing = read(&cache.by_name).get(&name).cloned();
        match &existing {
            Some(k) => precheck_existing(&k.meta, Some(&new))?,
            None if !cache.damaged_meta.is_empty() => {
                return Err(KmsError::DataLoss(format!(
                    "key {name} was not imported: {} key record(s) are damaged and their names are unknown, and a name must never be reused: restore the data directory from backup",
                    cache.damaged_meta.len()
                )));
            }
            None => {
                // The same checks creation makes, before the token is used.
                KeyMeta::new_imported(
                    name.clone(),
                    KeyId([0; 16]),
                    now,
                    new.description.clone(),
                    new.labels.clone(),
                    new.exportable,
                    String::new(),
                )?;
            }
        }
        // Used up before decryption, whatever follows.
        let used = TokenRecord {
            name: record.name.clone(),
            created: record.created,
            expires: record.expires,
            wrapping_key: None,
            used: Some(now),
        };
        match backend
            .put(
                &path,
                seal_record(&keyring, &path, &used)?,
                Expect::Version(stored.version),
            )
            .await
        {
            Ok(_) => {}
            Err(crate::storage::StorageError::Conflict { .. }) => {
                return Err(KmsError::invalid(
                    "this import token was used by another request at the same time: a token is good for one import; get new parameters",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let material = tokio::task::spawn_blocking(move || wk.unwrap(&wrapped))
            .await
            .map_err(|e| KmsError::Internal(format!("unwrapping failed: {e}")))?
            .map_err(|e| match e {
                // The same advice for every failure, so it says nothing about which step failed.
                WrapError::DoesNotOpen | WrapError::WrongLength { .. } => KmsError::invalid(format!(
                    "{e}. This token is now used up: get new parameters (`kms-cli key import-params {name}`) and wrap to the new public key. Usual causes: the RSA part must come first; RSA-OAEP with SHA-256 and MGF1-SHA-256 (openssl: -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256); AES key wrap with padding (openssl enc -id-aes256-wrap-pad -iv A65959A6); 32 bytes of raw material; the file sent as raw binary, not base64"
                )),
                other => wrap_error(other),
            })?;
        let material = Arc::new(material);
        let m = Arc::clone(&material);
        let probe = Arc::clone(&material);
        let meta = match existing {
            None => {
                self.create_with(
                    name,
                    move |name, id, now| {
                        let fp = fingerprint_hex(&id, 1, &m);
                        Ok(KeyMeta::new_imported(
                            name,
                            id,
                            now,
                            new.description,
                            new.labels,
                            new.exportable,
                            fp,
                        )?)
                    },
                    Some(material),
                )
                .await?
            }
            Some(_) => {
                self.update_with(
                    &name,
                    move |meta, now| {
                        let id = meta.id;
                        let same = |v: u32, f: &str| same_material(f, &id, v, &m);
                        // The material of a destroyed version brings that version back.
                        if matches!(meta.state, kms_core::key::KeyState::Destroyed { .. })
                            || meta.has_destroyed_match(same)
                        {
                            meta.restore_version(same, now)?;
                            return Ok(());
                        }
                        if let Some(v) = meta.versions.iter().find(|v| {
                            v.fingerprint.as_deref().is_some_and(|f| same(v.version, f))
                        }) {
                            return Err(KmsError::invalid(format!(
                                "this material is already version {} of key {} ({}): import different material to add a version",
                                v.version,
                                meta.name,
                                meta.version_state_label(v.version)
                            )));
                        }
                        let next = meta.latest().saturating_add(1);
                        meta.import_version(fingerprint_hex(&id, next, &m), now)?;
                        Ok(())
                    },
                    Some(material),
                )
                .await?
            }
        };
        // The version the material went to: the new latest, or a restored older one.
        let version = meta
            .versions
            .iter()
            .rev()
            .find(|v| {
                v.fingerprint
                    .as_deref()
                    .is_some_and(|f| same_material(f, &meta.id, v.version, &probe))
            })
            .map_or(meta.latest(), |v| v.version);
        tracing::info!(key = %meta.name, version, "key material imported");
        Ok((meta, version))
    }

    /// Version `version` (0 = the latest) of key `name`, wrapped to `recipient`. Only for an
    /// exportable key, and only a version that may still decrypt.
    pub fn export(
        &self,
        name: &KeyName,
        version: u32,
        recipient: &Recipient,
    ) -> Result<(u32, Vec<u8>), KmsError> {
        let key = self.lookup(name)?;
        exportable(&key.meta)?;
        let v = if version == 0 {
            key.meta.latest()
        } else {
            version
        };
        if v > key.meta.latest() {
            return Err(KmsError::invalid(format!(
                "key {name} has no version {v}: its versions are 1 to {} (without a version, the latest is exported)",
                key.meta.latest()
            )));
        }
        key.meta.check_decrypt(v)?;
        let material = key.material.get(&v).ok_or_else(|| no_material(&key, v))?;
        let wrapped = recipient.wrap(material.expose()).map_err(wrap_error)?;
        tracing::info!(key = %name, version = v, "key material exported (wrapped)");
        Ok((v, wrapped))
    }

    /// Refuses export of a key not created exportable (NOT_FOUND for an unknown key).
    pub fn check_exportable(&self, name: &KeyName) -> Result<(), KmsError> {
        exportable(&self.lookup(name)?.meta)
    }

    /// Deletes token records past their expiry and returns how many remain. Best effort: a
    /// failure is logged and the next issue retries.
    async fn purge_expired_tokens(&self, keyring: &Keyring, now: u64) -> usize {
        let backend = self.seal.backend();
        let paths = match backend.list(IMPORTS).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not list import tokens to purge expired ones");
                return 0;
            }
        };
        let mut remaining = 0;
        for path in paths {
            let expired = match backend.get(&path).await {
                Ok(Some(rec)) => match open_record(keyring, &path, &rec.value) {
                    Ok(r) => now >= r.expires,
                    // A record this keyring cannot open is left alone (a newer barrier term
                    // on another node); it is never used either.
                    Err(_) => false,
                },
                _ => false,
            };
            if !expired {
                remaining += 1;
            } else if let Err(e) = backend.delete(&path, Expect::Any).await {
                tracing::warn!(error = %e, "could not delete an expired import token");
            }
        }
        remaining
    }
}

fn exportable(meta: &KeyMeta) -> Result<(), KmsError> {
    if meta.exportable {
        return Ok(());
    }
    let name = &meta.name;
    Err(KmsError::FailedPrecondition(format!(
        "key {name} is not exportable and can never become so: exportable is chosen once, when a key is created (`kms-cli key create NAME --exportable`, or `kms-cli key import NAME --exportable` for a new imported key)"
    )))
}

/// Refuses a token issued for another key, already used, or expired at `now`.
fn check_token(record: &TokenRecord, name: &KeyName, now: u64) -> Result<(), KmsError> {
    if record.name != name.as_str() {
        return Err(KmsError::invalid(format!(
            "this import token was issued for another key, not {name}: get parameters for {name} (`kms-cli key import-params {name}`)"
        )));
    }
    if let Some(at) = record.used {
        return Err(KmsError::invalid(format!(
            "this import token was already used at {}: a token is good for one import; get new parameters (`kms-cli key import-params {name}`)",
            kms_core::key::fmt_utc(at)
        )));
    }
    if now >= record.expires {
        return Err(KmsError::invalid(format!(
            "this import token expired at {}: get new parameters (`kms-cli key import-params {name}`)",
            kms_core::key::fmt_utc(record.expires)
        )));
    }
    Ok(())
}

/// Refuses an import into an existing key that cannot take one (KMS-generated, disabled,
/// pending deletion) and, when `new` is given, fields that only a creation sets.
fn precheck_existing(meta: &KeyMeta, new: Option<&NewKeyFields>) -> Result<(), KmsError> {
    if let Some(n) = new
        && (!n.description.is_empty() || !n.labels.is_empty() || n.exportable)
    {
        return Err(KmsError::invalid(format!(
            "key {} exists: description, labels and exportable are set only by the import that creates a key; import into an existing key without them (exportable never changes)",
            meta.name
        )));
    }
    if matches!(meta.state, kms_core::key::KeyState::Destroyed { .. })
        && meta.origin == kms_core::key::Origin::External
    {
        // Whether the material matches a destroyed version is known only after unwrapping.
        return Ok(());
    }
    let mut probe = meta.clone();
    probe.import_version(String::new(), now_unix())?;
    Ok(())
}

fn seal_record(keyring: &Keyring, path: &str, record: &TokenRecord) -> Result<Vec<u8>, KmsError> {
    let json =
        Zeroizing::new(serde_json::to_vec(record).map_err(|e| KmsError::Internal(e.to_string()))?);
    Ok(keyring.seal(path, &json)?)
}

fn open_record(keyring: &Keyring, path: &str, sealed: &[u8]) -> Result<TokenRecord, KmsError> {
    let plain = keyring.open(path, sealed).map_err(|e| {
        KmsError::DataLoss(format!(
            "the import token's record does not open ({e}): get new parameters"
        ))
    })?;
    serde_json::from_slice(&plain).map_err(|_| {
        KmsError::DataLoss("the import token's record is damaged: get new parameters".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(used: Option<u64>) -> TokenRecord {
        TokenRecord {
            name: "app/byok".into(),
            created: 1_000,
            expires: 1_000 + MAX_IMPORT_TOKEN_TTL,
            wrapping_key: None,
            used,
        }
    }

    fn msg(r: Result<(), KmsError>) -> String {
        match r {
            Err(KmsError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    /// A token is good for 24 hours to the second, for its own key, once
    /// [RègleInjectionClé] (time injected: no waiting).
    #[test]
    fn tokens_expire_after_24_hours_and_serve_one_key_once() {
        let name: KeyName = "app/byok".parse().expect("name");
        let fresh = record(None);
        assert!(check_token(&fresh, &name, 1_000).is_ok());
        assert!(check_token(&fresh, &name, 1_000 + MAX_IMPORT_TOKEN_TTL - 1).is_ok());
        let m = msg(check_token(&fresh, &name, 1_000 + MAX_IMPORT_TOKEN_TTL));
        assert!(m.contains("expired at 1970-01-02T00:16:40Z"), "{m}");
        let other: KeyName = "app/other".parse().expect("name");
        let m = msg(check_token(&fresh, &other, 1_000));
        assert!(m.contains("another key") && !m.contains("app/byok"), "{m}");
        let m = msg(check_token(&record(Some(1_001)), &name, 1_002));
        assert!(m.contains("already used"), "{m}");
    }

    #[test]
    fn malformed_tokens_are_unknown() {
        for t in [
            "",
            "abc",
            "zz".repeat(16).as_str(),
            "../keys/x/meta/aaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(
                matches!(token_path(t), Err(KmsError::InvalidArgument(_))),
                "{t}"
            );
        }
        let path = token_path(&"AB".repeat(16)).expect("hex");
        assert_eq!(path, token_path(&"ab".repeat(16)).expect("hex"));
        assert!(
            path.starts_with("imports/") && !path.contains(&"ab".repeat(16)),
            "{path}"
        );
    }
}
