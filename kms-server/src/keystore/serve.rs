//! Serving from the cache: Encrypt, Decrypt, ReEncrypt and GenerateDataKey, and reading keys
//! (get, list, the key a ciphertext names). Nothing here touches storage.

use super::*;

use std::ops::Bound;

use kms_core::ciphertext::{self, EncryptionContext};
use kms_core::key::{LifecycleError, Operation};
use zeroize::Zeroizing;

/// A successful encryption.
pub struct Encrypted {
    pub ciphertext: Vec<u8>,
    pub key: KeyName,
    pub version: u32,
}

/// A successful decryption.
pub struct Decrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key: KeyName,
    pub version: u32,
}

impl Keystore {
    pub(super) fn lookup(&self, name: &KeyName) -> Result<Arc<CachedKey>, KmsError> {
        let cache = self.serving()?;
        let found = read(&cache.by_name).get(name).cloned();
        found.ok_or_else(|| {
            if cache.damaged_meta.is_empty() {
                KmsError::NotFound(format!(
                    "key {name} does not exist: create it with `kms-cli key create {name}`"
                ))
            } else {
                KmsError::NotFound(format!("key {name} was not found{}", cache.damaged_note()))
            }
        })
    }

    pub fn encrypt(
        &self,
        name: &KeyName,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        if plaintext.len() > self.settings.max_plaintext_bytes {
            return Err(KmsError::invalid(format!(
                "plaintext is {} bytes, the limit is {} bytes: encrypt larger data locally with a data key (`kms-cli envelope encrypt`)",
                plaintext.len(),
                self.settings.max_plaintext_bytes
            )));
        }
        let key = self.lookup(name)?;
        self.encrypt_with(&key, plaintext, context)
    }

    fn encrypt_with(
        &self,
        key: &CachedKey,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let version = key.meta.check_encrypt(Operation::Encrypt)?;
        let material = key
            .material
            .get(&version)
            .ok_or_else(|| no_material(key, version))?;
        let ciphertext = ciphertext::seal(material, key.meta.id, version, context, plaintext)?;
        if let Some(c) = key.pending_counts.get(version as usize - 1) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Encrypted {
            ciphertext,
            key: key.meta.name.clone(),
            version,
        })
    }

    /// Decrypts a ciphertext. The header (key id, version) is not authenticated until the
    /// ciphertext is opened, so anything it gets wrong (unknown key id, a version the key never
    /// had) is reported as the opaque authentication failure; a revoked or below-minimum version
    /// is named only for an authentic ciphertext (the plaintext is then dropped, unreleased).
    pub fn decrypt(&self, ct: &[u8], context: &EncryptionContext) -> Result<Decrypted, KmsError> {
        let header = ciphertext::parse_header(ct)?;
        let auth_failed = || KmsError::from(ciphertext::CiphertextError::Authentication);
        let cache = self.serving()?;
        let found = read(&cache.by_id).get(&header.key_id).cloned();
        let key = match found {
            Some(k) => k,
            // The header is not authenticated, but naming a key id whose record is damaged
            // tells the caller nothing secret and saves them from chasing a wrong context.
            None => match read(&cache.damaged_ids).get(&header.key_id).cloned() {
                Some(why) => {
                    return Err(KmsError::DataLoss(format!(
                        "key id {}: its stored record is damaged ({why}), so this ciphertext cannot be decrypted: restore the data directory from backup",
                        header.key_id
                    )));
                }
                None => return Err(auth_failed()),
            },
        };
        match key.meta.check_decrypt(header.version) {
            Ok(()) => {}
            Err(LifecycleError::NoSuchVersion { .. }) => return Err(auth_failed()),
            Err(
                e @ (LifecycleError::BelowMinDecryption { .. }
                | LifecycleError::VersionRevoked { .. }),
            ) => {
                let authentic = key
                    .material
                    .get(&header.version)
                    .is_some_and(|m| ciphertext::open(m, ct, context).is_ok());
                return Err(if authentic { e.into() } else { auth_failed() });
            }
            Err(e) => return Err(e.into()),
        }
        let material = key
            .material
            .get(&header.version)
            .ok_or_else(|| no_material(&key, header.version))?;
        let plaintext = ciphertext::open(material, ct, context)?;
        Ok(Decrypted {
            plaintext,
            key: key.meta.name.clone(),
            version: header.version,
        })
    }

    /// Decrypts and encrypts again under `dest` (or the same key's latest version); the
    /// plaintext never leaves the server.
    pub fn reencrypt(
        &self,
        ct: &[u8],
        context: &EncryptionContext,
        dest: Option<&KeyName>,
        dest_context: &EncryptionContext,
    ) -> Result<(Decrypted, Encrypted), KmsError> {
        let mut d = self.decrypt(ct, context)?;
        let target = dest.unwrap_or(&d.key);
        let key = self.lookup(target)?;
        let e = self.encrypt_with(&key, &d.plaintext, dest_context)?;
        d.plaintext = Zeroizing::new(Vec::new());
        Ok((d, e))
    }

    /// A fresh AES-256 data key, and the same key encrypted under `name`.
    pub fn generate_data_key(
        &self,
        name: &KeyName,
        context: &EncryptionContext,
    ) -> Result<(Secret32, Encrypted), KmsError> {
        let key = self.lookup(name)?;
        let dk = Secret32::random().map_err(|e| KmsError::Internal(e.to_string()))?;
        let e = self.encrypt_with(&key, dk.expose(), context)?;
        Ok((dk, e))
    }

    pub fn get(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        let key = self.lookup(name)?;
        Ok(with_counts(&key))
    }

    /// The name of the key a ciphertext names in its header (not authenticated: for access
    /// checks before decryption only), if this KMS holds it.
    pub fn key_name_of(&self, ciphertext: &[u8]) -> Option<KeyName> {
        let header = ciphertext::parse_header(ciphertext).ok()?;
        let cache = self.cache().ok()?;
        read(&cache.by_id)
            .get(&header.key_id)
            .map(|k| k.meta.name.clone())
    }

    /// Keys whose name starts with `prefix` and that `visible` accepts, in name order, after
    /// `after` (exclusive).
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Result<(Vec<KeyMeta>, Option<String>), KmsError> {
        let cache = self.serving()?;
        let by_name = read(&cache.by_name);
        // Start at the later of the prefix and the page token; stop past the prefix.
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut matching = by_name
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(n, _)| n.as_str().starts_with(prefix))
            .filter(|(n, _)| visible(n.as_str()));
        let page: Vec<KeyMeta> = matching
            .by_ref()
            .take(limit)
            .map(|(_, k)| with_counts(k))
            .collect();
        let more = matching.next().is_some();
        let next = if more {
            page.last().map(|m| m.name.to_string())
        } else {
            None
        };
        Ok((page, next))
    }
}
