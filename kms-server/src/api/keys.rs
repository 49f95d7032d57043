//! What the `kms.v1.KeyAdmin` and `kms.v1.Crypto` services share: [`KeysService`] (both
//! services are served by one value over the [`Keystore`]) and the parsing of request fields
//! at the edge.

use std::collections::BTreeMap;
use std::sync::Arc;

use kms_core::ciphertext::EncryptionContext;
use kms_core::keyname::KeyName;
use kms_core::wrap::{Recipient, RsaRecipient};
use kms_proto::v1 as pb;
use tonic::{Response, Status};

use crate::access::authz::Authz;
use crate::access::principal::Principal;
use crate::error::KmsError;
use crate::keystore::Keystore;
use kms_core::policy::Operation as Op;

pub struct KeysService {
    pub(super) keystore: Arc<Keystore>,
    pub(super) authz: Arc<Authz>,
}

impl KeysService {
    pub fn new(keystore: Arc<Keystore>, authz: Arc<Authz>) -> Self {
        Self { keystore, authz }
    }

    /// Checks a grant for a key operation that carries no encryption context.
    pub(super) fn allow(&self, who: &Principal, op: Op, key: &KeyName) -> Result<(), KmsError> {
        self.authz
            .check(who, op, Some(key.as_str()), &BTreeMap::new())
    }
}

/// The request's context as the policy sees it.
pub(super) fn cmap(h: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn name(s: &str) -> Result<KeyName, KmsError> {
    Ok(s.parse::<KeyName>()?)
}

pub(super) fn context(
    map: std::collections::HashMap<String, String>,
) -> Result<EncryptionContext, KmsError> {
    Ok(EncryptionContext::new(map)?)
}

pub(super) type R<T> = Result<Response<T>, Status>;

/// The recipient of a request, with the format its wrap will have; None when absent.
pub(super) fn recipient(
    r: Option<pb::Recipient>,
) -> Result<Option<(Recipient, pb::WrapFormat)>, KmsError> {
    use pb::recipient::Recipient as R;
    let bad = |e: kms_core::wrap::WrapError| KmsError::invalid(e.to_string());
    Ok(match r.and_then(|r| r.recipient) {
        None => None,
        Some(R::RsaPublicKey(der)) => Some((
            Recipient::Rsa(RsaRecipient::parse(&der).map_err(bad)?),
            pb::WrapFormat::RsaOaepSha256AesKwp,
        )),
        Some(R::AgeRecipient(a)) => Some((Recipient::age(&a).map_err(bad)?, pb::WrapFormat::Age)),
    })
}
