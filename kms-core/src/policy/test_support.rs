//! Fixtures shared by the policy tests: the example policies, a basic set, and helpers to parse
//! and decide.

use std::collections::BTreeMap;

use super::decision::{Decision, PolicySet, Request};
use super::parse::PolicyError;

pub(super) fn set(files: &[(&str, &str)]) -> Result<PolicySet, PolicyError> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    PolicySet::parse(&files)
}

pub(super) fn decide(set: &PolicySet, principal: &str, op: &str, key: Option<&str>) -> Decision {
    let ctx = BTreeMap::new();
    set.decide(&Request {
        principal,
        operation: op.parse().unwrap(),
        key,
        context: &ctx,
    })
}

pub(super) const EXAMPLES: [(&str, &str); 6] = [
    ("admin.toml", include_str!("../../../policies/admin.toml")),
    (
        "auditor.toml",
        include_str!("../../../policies/auditor.toml"),
    ),
    ("dev.toml", include_str!("../../../policies/dev.toml")),
    (
        "officer.toml",
        include_str!("../../../policies/officer.toml"),
    ),
    (
        "separation-of-duties.toml",
        include_str!("../../../policies/separation-of-duties.toml"),
    ),
    (
        "service.toml",
        include_str!("../../../policies/service.toml"),
    ),
];

pub(super) const BASIC: &str = r#"
[[rule]]
id = "use"
effect = "allow"
principals = ["spiffe://prod/payments/*"]
operations = ["encrypt", "decrypt"]
keys = ["payments/**", "shared/*/key"]

[[rule]]
id = "no-decrypt-archive"
effect = "deny"
principals = ["spiffe://prod/payments/batch"]
operations = ["decrypt"]
keys = ["payments/archive/**"]
"#;
