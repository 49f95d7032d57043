//! Command-line values parsed into typed ones at the edge: `KEY=VALUE` pairs, durations,
//! `-`-or-a-file streams, revocation reasons.
//!
//! A value clap cannot parse is a usage error (exit 2) before anything runs; the `FromStr`
//! messages here are what clap prints after `invalid value … for '--flag'`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::ValueEnum;
use kms_client::proto;

use crate::Failure;

/// One `KEY=VALUE` argument (`--context`, `--label`): split at the first `=`, the key
/// non-empty; the value may be empty and may contain `=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyValue {
    pub(crate) key: String,
    pub(crate) value: String,
}

impl FromStr for KeyValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Self {
                key: key.to_string(),
                value: value.to_string(),
            }),
            Some(_) => Err("the key before '=' is empty: use KEY=VALUE, e.g. tenant=acme".into()),
            None => Err("no '=' in it: use KEY=VALUE, e.g. tenant=acme".into()),
        }
    }
}

/// Collects `--FLAG KEY=VALUE` pairs into a map.
///
/// Returns: the map, or a usage failure (exit 2) naming the first key given twice, since
/// silently keeping one of two values would bind the wrong context to a ciphertext.
pub(crate) fn pairs_to_map(
    pairs: &[KeyValue],
    flag: &str,
) -> Result<HashMap<String, String>, Failure> {
    let mut map = HashMap::with_capacity(pairs.len());
    for p in pairs {
        if map.insert(p.key.clone(), p.value.clone()).is_some() {
            let what = flag.trim_start_matches("--");
            return Err(Failure::usage(format!(
                "{what} key {} given twice: give each {flag} key once",
                p.key
            )));
        }
    }
    Ok(map)
}

/// A positive duration in whole seconds, written as a number and a unit: `90d`, `12h`, `30m`,
/// `3600s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Period(pub(crate) u64);

impl FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}` is not a duration: use a number and a unit (s, m, h or d), e.g. 90d, 12h, 3600s"
            )
        };
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        let secs = n
            .checked_mul(scale)
            .ok_or_else(|| format!("`{s}` is too long"))?;
        if secs == 0 {
            return Err(format!("`{s}` is zero: give a positive duration, e.g. 90d"));
        }
        Ok(Self(secs))
    }
}

/// `DURATION` or `off` (no automatic rotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rotation {
    Off,
    Every(Period),
}

impl Rotation {
    /// The wire value: seconds, 0 for none.
    pub(crate) fn seconds(self) -> u64 {
        match self {
            Rotation::Off => 0,
            Rotation::Every(p) => p.0,
        }
    }
}

impl FromStr for Rotation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Rotation::Off);
        }
        s.parse()
            .map(Rotation::Every)
            .map_err(|e| format!("{e}; or `off` for no automatic rotation"))
    }
}

/// `--in`/`--out`: standard input or output (`-`), or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Std,
    File(PathBuf),
}

impl FromStr for Stream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty path: give a file, or - for standard input/output".into()),
            "-" => Ok(Stream::Std),
            _ => Ok(Stream::File(PathBuf::from(s))),
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Std => f.write_str("-"),
            Stream::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a key version is revoked.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Reason {
    /// A newer version replaced it; nothing is known to be wrong with it.
    Superseded,
    /// The key material is, or may be, known to someone else.
    Compromised,
    /// The data it protected is no longer needed.
    Cessation,
}

impl From<Reason> for proto::RevocationReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Superseded => proto::RevocationReason::Superseded,
            Reason::Compromised => proto::RevocationReason::Compromised,
            Reason::Cessation => proto::RevocationReason::Cessation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_splits_at_first_equals() {
        let kv: KeyValue = "a=b=c".parse().expect("valid");
        assert_eq!((kv.key.as_str(), kv.value.as_str()), ("a", "b=c"));
        let kv: KeyValue = "a=".parse().expect("empty value is allowed");
        assert_eq!(kv.value, "");
        assert!("novalue".parse::<KeyValue>().is_err());
        assert!("=v".parse::<KeyValue>().is_err());
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let pairs: Vec<KeyValue> = ["k=1", "j=2", "k=3"]
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        let err = pairs_to_map(&pairs, "--context").expect_err("duplicate");
        assert_eq!(err.code, 2);
        assert_eq!(
            err.message,
            "context key k given twice: give each --context key once"
        );
        assert_eq!(
            pairs_to_map(&pairs[..2], "--label").map(|m| m.len()).ok(),
            Some(2)
        );
    }

    #[test]
    fn periods() {
        let p = |s: &str| s.parse::<Period>().map(|p| p.0);
        assert_eq!(p("90d"), Ok(90 * 86_400));
        assert_eq!(p("12h"), Ok(43_200));
        assert_eq!(p("30m"), Ok(1_800));
        assert_eq!(p("3600s"), Ok(3_600));
        for bad in [
            "",
            "90",
            "d",
            "1.5h",
            "-1h",
            "1y",
            "0h",
            "99999999999999999999d",
        ] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!("off".parse::<Rotation>().map(Rotation::seconds), Ok(0));
        assert_eq!("1h".parse::<Rotation>().map(Rotation::seconds), Ok(3_600));
    }

    #[test]
    fn streams() {
        assert_eq!("-".parse::<Stream>(), Ok(Stream::Std));
        assert_eq!(
            "a.txt".parse::<Stream>(),
            Ok(Stream::File(PathBuf::from("a.txt")))
        );
        assert!("".parse::<Stream>().is_err());
    }
}
