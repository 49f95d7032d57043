//! Fixtures shared by the key tests: a sample key, its name, labels and an imported key.

use std::collections::BTreeMap;

use super::model::{KeyMeta, Purpose};
use crate::keyname::{KeyId, KeyName};

pub(super) const T0: u64 = 1_700_000_000;
pub(super) const HOUR: u64 = 3_600;

pub(super) fn name() -> KeyName {
    "payments/card-tokens".parse().unwrap()
}

pub(super) fn key(now: u64) -> KeyMeta {
    KeyMeta::new(
        name(),
        KeyId([7; 16]),
        Purpose::EncryptDecrypt,
        now,
        "card tokens".into(),
        BTreeMap::from([("team".into(), "payments".into())]),
        None,
    )
    .unwrap()
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn imported(now: u64) -> KeyMeta {
    KeyMeta::new_imported(
        name(),
        KeyId([8; 16]),
        now,
        String::new(),
        BTreeMap::new(),
        false,
        "f1".into(),
    )
    .unwrap()
}
