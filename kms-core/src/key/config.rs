//! Key configuration: the rotation period, minimum decryption version, description and labels,
//! and the argument checks that hold them to the limits.

use std::collections::BTreeMap;

use super::lifecycle::LifecycleError;
use super::model::{
    KeyMeta, KeyState, MAX_DESCRIPTION_LEN, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS,
    MIN_ROTATION_PERIOD, Origin,
};
use crate::keyname::KeyName;

impl KeyMeta {
    /// Versions below `v` will refuse to decrypt. `v` must be in 1..=latest (`Invalid`);
    /// lowering it again is allowed. `NotAllowed` on a destroyed key.
    pub fn set_min_decryption_version(&mut self, v: u32, now: u64) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        let latest = self.latest();
        if v == 0 || v > latest {
            return Err(LifecycleError::Invalid(format!(
                "min_decryption_version {v} is not a version of key '{}': choose one from 1 to {latest}",
                self.name
            )));
        }
        self.min_decryption_version = v;
        self.updated = now;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`, or `Some(0)` as 0 on the wire) the automatic rotation
    /// period, counted from the last rotation. `Invalid` under [`MIN_ROTATION_PERIOD`];
    /// `NotAllowed` on a destroyed key.
    pub fn set_rotation_period(
        &mut self,
        period: Option<u64>,
        now: u64,
    ) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        if self.origin == Origin::External && period.is_some_and(|p| p > 0) {
            return Err(LifecycleError::Invalid(format!(
                "key '{}' holds imported material, which the KMS cannot rotate: it takes no rotation period; import new material to add a version",
                self.name
            )));
        }
        self.rotation_period = check_rotation_period(&self.name, period)?;
        self.updated = now;
        Ok(())
    }

    /// Replaces the description. `Invalid` over [`MAX_DESCRIPTION_LEN`] bytes; `NotAllowed` on
    /// a destroyed key.
    pub fn set_description(&mut self, description: String, now: u64) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        check_description(&self.name, &description)?;
        self.description = description;
        self.updated = now;
        Ok(())
    }

    /// Replaces all labels (`replace`), or adds `labels` to the existing ones, overwriting
    /// values of keys already present. The result must follow the label rules, else
    /// `Invalid` and nothing changes: at most [`MAX_LABELS`] labels; keys of 1 to
    /// [`MAX_LABEL_KEY_LEN`] bytes of `[a-z0-9_-]`; values of at most [`MAX_LABEL_VALUE_LEN`]
    /// bytes. `NotAllowed` on a destroyed key.
    pub fn set_labels(
        &mut self,
        labels: BTreeMap<String, String>,
        replace: bool,
        now: u64,
    ) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        let merged = if replace {
            labels
        } else {
            let mut m = self.labels.clone();
            m.extend(labels);
            m
        };
        check_labels(&self.name, &merged)?;
        self.labels = merged;
        self.updated = now;
        Ok(())
    }

    fn check_configurable(&self) -> Result<(), LifecycleError> {
        match self.state {
            KeyState::Destroyed { .. } => {
                Err(self.not_allowed("has been destroyed: its configuration can no longer change"))
            }
            _ => Ok(()),
        }
    }
}

// ---- argument checks -----------------------------------------------------------------------

pub(super) fn check_rotation_period(
    name: &KeyName,
    p: Option<u64>,
) -> Result<Option<u64>, LifecycleError> {
    match p {
        None | Some(0) => Ok(None),
        Some(p) if p < MIN_ROTATION_PERIOD => Err(LifecycleError::Invalid(format!(
            "a rotation period of {p} seconds is too short for key '{name}': the minimum is {MIN_ROTATION_PERIOD} seconds (one hour); use 0 for no automatic rotation"
        ))),
        Some(p) => Ok(Some(p)),
    }
}

pub(super) fn check_description(name: &KeyName, d: &str) -> Result<(), LifecycleError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(LifecycleError::Invalid(format!(
            "the description of key '{name}' is {} bytes, the limit is {MAX_DESCRIPTION_LEN}: shorten it",
            d.len()
        )));
    }
    Ok(())
}

pub(super) fn check_labels(
    name: &KeyName,
    labels: &BTreeMap<String, String>,
) -> Result<(), LifecycleError> {
    let invalid = |m: String| Err(LifecycleError::Invalid(format!("key '{name}': {m}")));
    if labels.len() > MAX_LABELS {
        return invalid(format!(
            "{} labels, the limit is {MAX_LABELS}: remove some",
            labels.len()
        ));
    }
    for (k, v) in labels {
        // Long keys are not echoed back: the message stays short whatever the input.
        if k.is_empty() || k.len() > MAX_LABEL_KEY_LEN {
            return invalid(format!(
                "a label key of {} bytes is not allowed: use 1 to {MAX_LABEL_KEY_LEN} bytes",
                k.len()
            ));
        }
        if !k
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        {
            return invalid(format!(
                "label key {k:?} is not allowed: use only a-z, 0-9, '_' and '-'"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return invalid(format!(
                "the value of label {k:?} is {} bytes, the limit is {MAX_LABEL_VALUE_LEN}",
                v.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Purpose;
    use crate::key::test_support::*;
    use crate::keyname::KeyId;

    #[test]
    fn rotation_period_must_be_at_least_an_hour() {
        let mk = |p| {
            KeyMeta::new(
                name(),
                KeyId([1; 16]),
                Purpose::EncryptDecrypt,
                T0,
                String::new(),
                BTreeMap::new(),
                p,
            )
        };
        let e = mk(Some(HOUR - 1)).unwrap_err();
        assert!(e.is_invalid_argument());
        assert!(e.to_string().contains("3600"), "{e}");
        assert_eq!(mk(Some(HOUR)).unwrap().rotation_period, Some(HOUR));
        assert_eq!(mk(Some(0)).unwrap().rotation_period, None);
        let mut k = key(T0);
        assert!(
            k.set_rotation_period(Some(59), T0 + 1)
                .unwrap_err()
                .is_invalid_argument()
        );
        assert_eq!((k.rotation_period, k.updated), (None, T0));
    }

    #[test]
    fn min_decryption_version_must_be_a_version() {
        let mut k = key(T0);
        k.rotate(T0).unwrap();
        for bad in [0, 3] {
            assert!(
                k.set_min_decryption_version(bad, T0 + 1)
                    .unwrap_err()
                    .is_invalid_argument()
            );
        }
        assert_eq!(k.min_decryption_version, 1);
        k.set_min_decryption_version(2, T0 + 1).unwrap();
        k.set_min_decryption_version(1, T0 + 2).unwrap();
        assert_eq!(k.check_decrypt(1), Ok(()));
    }

    #[test]
    fn label_rules() {
        let mut k = key(T0);
        k.set_labels(labels(&[("env", "prod")]), false, T0 + 1)
            .unwrap();
        assert_eq!(k.labels, labels(&[("env", "prod"), ("team", "payments")]));
        k.set_labels(labels(&[("env", "dev")]), true, T0 + 2)
            .unwrap();
        assert_eq!(k.labels, labels(&[("env", "dev")]));
        assert_eq!(k.updated, T0 + 2);

        let long_key = "a".repeat(64);
        let long_value = "v".repeat(257);
        for bad in [
            labels(&[("", "x")]),
            labels(&[("Env", "x")]),
            labels(&[("a.b", "x")]),
            labels(&[("é", "x")]),
            labels(&[(&long_key, "x")]),
            labels(&[("ok", &long_value)]),
        ] {
            let e = k.set_labels(bad.clone(), true, T0 + 3).unwrap_err();
            assert!(e.is_invalid_argument(), "{bad:?}");
            assert!(e.to_string().contains("payments/card-tokens"), "{e}");
        }
        assert_eq!(k.labels, labels(&[("env", "dev")]));
        assert!(
            k.set_labels(labels(&[(&"a".repeat(63), &"v".repeat(256))]), false, T0)
                .is_ok()
        );

        // The count limit applies to the merged result.
        let many: BTreeMap<String, String> = (0..MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        assert!(k.set_labels(many.clone(), true, T0 + 4).is_ok());
        let e = k
            .set_labels(labels(&[("one-more", "")]), false, T0 + 5)
            .unwrap_err();
        assert!(e.is_invalid_argument());
        assert_eq!(k.labels, many);
        let too_many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        let e = KeyMeta::new(
            name(),
            KeyId([1; 16]),
            Purpose::EncryptDecrypt,
            T0,
            String::new(),
            too_many,
            None,
        )
        .unwrap_err();
        assert!(e.is_invalid_argument());
    }

    #[test]
    fn description_limit() {
        let mut k = key(T0);
        k.set_description("d".repeat(MAX_DESCRIPTION_LEN), T0 + 1)
            .unwrap();
        let e = k
            .set_description("d".repeat(MAX_DESCRIPTION_LEN + 1), T0 + 2)
            .unwrap_err();
        assert!(e.is_invalid_argument());
        assert_eq!(k.updated, T0 + 1);
    }
}
