//! Shared by the in-process keystore tests: a keystore on a fresh sled directory, initialised
//! 1-of-1 and unsealed.

use std::sync::Arc;

use kms_server::Seal;
use kms_server::keystore::{KeySettings, Keystore};
use kms_server::storage::{Backend, SledBackend};

pub async fn unsealed_keystore(dir: &std::path::Path) -> (Arc<Seal>, Keystore) {
    let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(dir).unwrap());
    let seal = Arc::new(Seal::load(backend).await.unwrap());
    let shares = seal.init(1, 1).await.unwrap();
    seal.unseal(&shares.shares[0]).await.unwrap();
    let keystore = Keystore::new(seal.clone(), KeySettings::default());
    keystore.load().await.unwrap();
    (seal, keystore)
}
