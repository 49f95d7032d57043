//! Rules and decisions: what a rule grants or denies, how a request matches it, and the policy
//! set's decision (explicit deny, else allow, else default deny) and listing queries.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::glob::Glob;
use super::operation::Operation;
use super::separation::SeparationOfDuties;

// ---- rules -----------------------------------------------------------------------------------

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// A condition on one encryption-context entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextCondition {
    /// `"*"`: the entry must be present, any value.
    Present,
    /// The entry must be present with exactly this value.
    Equals(String),
}

impl ContextCondition {
    fn holds(&self, value: Option<&String>) -> bool {
        match (self, value) {
            (_, None) => false,
            (Self::Present, Some(_)) => true,
            (Self::Equals(want), Some(got)) => want == got,
        }
    }
}

/// One parsed `[[rule]]`, with where it was written.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub file: String,
    /// 1-based line of the rule's `[[rule]]` header.
    pub line: usize,
    pub effect: Effect,
    /// Never empty.
    pub principals: Vec<Glob>,
    /// Never empty.
    pub operations: Vec<Operation>,
    /// Empty: the rule lists only operations without a key, or is a deny on every key.
    pub keys: Vec<Glob>,
    pub mfa: bool,
    pub context: BTreeMap<String, ContextCondition>,
}

impl Rule {
    /// Where the rule is, for decisions and messages.
    pub fn location(&self) -> RuleRef {
        RuleRef {
            file: self.file.clone(),
            line: self.line,
            id: self.id.clone(),
        }
    }

    /// Whether one of the rule's principal patterns matches this identity.
    pub fn applies_to_principal(&self, principal: &str) -> bool {
        self.principals.iter().any(|g| g.is_match(principal))
    }

    /// Whether the rule concerns operations on this key (for "who can access this key").
    pub fn applies_to_key(&self, key: &str) -> bool {
        self.operations.iter().any(|op| op.needs_key())
            && (self.keys.is_empty() || self.keys.iter().any(|g| g.is_match(key)))
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        self.operations.contains(&req.operation)
            && self.applies_to_principal(req.principal)
            && self.key_matches(req.operation, req.key)
            && self
                .context
                .iter()
                .all(|(k, cond)| cond.holds(req.context.get(k)))
    }

    fn key_matches(&self, op: Operation, key: Option<&str>) -> bool {
        // Allow rules for key operations always name keys (checked at load), so an empty list
        // here is either a keyless grant or a deny on every key.
        if self.keys.is_empty() {
            return true;
        }
        if !op.needs_key() {
            return self.keys.iter().any(|g| g.as_str() == "**");
        }
        key.is_some_and(|k| self.keys.iter().any(|g| g.is_match(k)))
    }
}

/// Where a rule was written: `file:line (id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub file: String,
    pub line: usize,
    pub id: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.file, self.line, self.id)
    }
}

// ---- requests and decisions ------------------------------------------------------------------

/// What is asked: who, which operation, on which key, with which encryption context.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub principal: &'a str,
    pub operation: Operation,
    /// The key name, for operations on a key; ignored otherwise.
    pub key: Option<&'a str>,
    /// The request's encryption context (empty when it has none).
    pub context: &'a BTreeMap<String, String>,
}

/// The outcome of [`PolicySet::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Granted by `rule`; if `mfa`, only with a valid second factor (checked by the server).
    Allow { rule: RuleRef, mfa: bool },
    /// Refused by an explicit deny rule, or by default (`rule: None`).
    Deny { rule: Option<RuleRef> },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { rule, mfa: false } => write!(f, "allow by {rule}"),
            Self::Allow { rule, mfa: true } => write!(f, "allow with MFA by {rule}"),
            Self::Deny { rule: Some(rule) } => write!(f, "deny by {rule}"),
            Self::Deny { rule: None } => f.write_str("default deny"),
        }
    }
}

// ---- the policy set --------------------------------------------------------------------------

/// A parsed, checked set of rules. Immutable: reload builds a new one.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub(super) rules: Vec<Rule>,
    pub(super) separation: Vec<SeparationOfDuties>,
}

impl PolicySet {
    /// Decides a request (see the module docs): explicit deny, else allow, else default deny.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let mut first_allow: Option<&Rule> = None;
        let mut first_mfa: Option<&Rule> = None;
        for rule in self.rules.iter().filter(|r| r.matches(req)) {
            match rule.effect {
                Effect::Deny => {
                    return Decision::Deny {
                        rule: Some(rule.location()),
                    };
                }
                Effect::Allow => {
                    first_allow.get_or_insert(rule);
                    if rule.mfa {
                        first_mfa.get_or_insert(rule);
                    }
                }
            }
        }
        match first_mfa.or(first_allow) {
            Some(rule) => Decision::Allow {
                rule: rule.location(),
                mfa: rule.mfa,
            },
            None => Decision::Deny { rule: None },
        }
    }

    /// Every rule, in file order (for `policy list`).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The separation-of-duties declarations, in file order.
    pub fn separation_of_duties(&self) -> &[SeparationOfDuties] {
        &self.separation
    }

    /// The rules (allow and deny) that apply to this identity: "all rights of this user".
    pub fn rules_for_principal<'s>(&'s self, principal: &'s str) -> impl Iterator<Item = &'s Rule> {
        self.rules
            .iter()
            .filter(move |r| r.applies_to_principal(principal))
    }

    /// The rules (allow and deny) that concern this key: "who has access to this key".
    pub fn rules_for_key<'s>(&'s self, key: &'s str) -> impl Iterator<Item = &'s Rule> {
        self.rules.iter().filter(move |r| r.applies_to_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

    #[test]
    fn example_policies_decide_as_documented() {
        let s = set(&EXAMPLES).unwrap();
        let admin = "spiffe://kms.dev/admin";
        let service = "spiffe://kms.dev/service";
        let auditor = "spiffe://kms.dev/auditor";
        let officer = "spiffe://kms.dev/officer";
        let dev = "spiffe://kms.dev/dev";
        let stranger = "spiffe://kms.dev/stranger";
        // (principal, operation, key, allowed)
        let table: &[(&str, &str, Option<&str>, bool)] = &[
            (admin, "create", Some("app/orders"), true),
            (admin, "rotate", Some("payments/cards"), true),
            (admin, "configure", Some("app/orders"), true),
            (admin, "disable", Some("app/orders"), true),
            (admin, "enable", Some("app/orders"), true),
            (admin, "revoke", Some("app/orders"), true),
            (admin, "schedule-deletion", Some("app/orders"), true),
            (admin, "cancel-deletion", Some("app/orders"), true),
            (admin, "read", Some("app/orders"), true),
            (admin, "list", None, true),
            (admin, "encrypt", Some("app/orders"), false),
            (admin, "decrypt", Some("app/orders"), false),
            (admin, "generate-data-key", Some("app/orders"), false),
            (admin, "seal", None, false),
            (admin, "backup", None, false),
            (admin, "audit-read", None, false),
            (admin, "policy-reload", None, false),
            (service, "encrypt", Some("app/orders"), true),
            (service, "decrypt", Some("app/orders"), true),
            (service, "reencrypt", Some("app/a/b"), true),
            (service, "generate-data-key", Some("app/orders"), true),
            (service, "generate-random", None, true),
            (service, "encrypt", Some("app/escrow/backup"), true),
            (service, "decrypt", Some("app/escrow/backup"), false),
            (service, "encrypt", Some("payments/cards"), false),
            (service, "encrypt", Some("app"), false),
            (service, "create", Some("app/orders"), false),
            (service, "read", Some("app/orders"), false),
            (service, "list", None, false),
            (service, "seal", None, false),
            (auditor, "read", Some("app/orders"), true),
            (auditor, "list", None, true),
            (auditor, "policy-read", None, true),
            (auditor, "audit-read", None, true),
            (auditor, "encrypt", Some("app/orders"), false),
            (auditor, "create", Some("app/orders"), false),
            (auditor, "policy-reload", None, false),
            (officer, "seal", None, true),
            (officer, "rekey", None, true),
            (officer, "rotate-barrier", None, true),
            (officer, "backup", None, true),
            (officer, "encrypt", Some("app/orders"), false),
            (officer, "create", Some("app/orders"), false),
            (officer, "list", None, false),
            (stranger, "encrypt", Some("app/orders"), false),
            (stranger, "list", None, false),
        ];
        for &(p, op, key, allowed) in table {
            let d = decide(&s, p, op, key);
            assert_eq!(d.is_allowed(), allowed, "{p} {op} {key:?}: {d}");
        }
        for op in Operation::ALL {
            let key = op.needs_key().then_some("any/key");
            let d = decide(&s, dev, op.as_str(), key);
            assert!(d.is_allowed(), "dev {op}: {d}");
        }
        // The explicit deny is named; a stranger hears "default deny".
        let d = decide(&s, service, "decrypt", Some("app/escrow/backup"));
        assert!(
            matches!(&d, Decision::Deny { rule: Some(r) } if r.file == "service.toml"),
            "{d}"
        );
        assert_eq!(
            decide(&s, stranger, "list", None).to_string(),
            "default deny"
        );
        // Both listing directions.
        let admin_rules: Vec<_> = s.rules_for_principal(admin).map(|r| &r.id).collect();
        assert!(!admin_rules.is_empty());
        let on_key: Vec<_> = s
            .rules_for_key("app/orders")
            .map(|r| r.id.as_str())
            .collect();
        assert!(
            on_key.iter().any(|id| id.starts_with("service")),
            "{on_key:?}"
        );
        assert!(
            !on_key.iter().any(|id| id.starts_with("officer")),
            "{on_key:?}"
        );
    }

    #[test]
    fn deny_wins_and_default_deny() {
        let s = set(&[("p.toml", BASIC)]).unwrap();
        let api = "spiffe://prod/payments/api";
        let batch = "spiffe://prod/payments/batch";
        let d = decide(&s, api, "decrypt", Some("payments/archive/2024"));
        assert_eq!(
            d,
            Decision::Allow {
                rule: RuleRef {
                    file: "p.toml".into(),
                    line: 2,
                    id: "use".into()
                },
                mfa: false
            }
        );
        let d = decide(&s, batch, "decrypt", Some("payments/archive/2024"));
        assert_eq!(d.to_string(), "deny by p.toml:9 (no-decrypt-archive)");
        assert!(decide(&s, batch, "encrypt", Some("payments/archive/2024")).is_allowed());
        assert_eq!(
            decide(&s, api, "rotate", Some("payments/x")),
            Decision::Deny { rule: None }
        );
        // A key operation without a key is never allowed by a keyed rule.
        assert!(!decide(&s, api, "encrypt", None).is_allowed());
    }

    #[test]
    fn context_conditions() {
        let src = r#"
[[rule]]
id = "tenant-bound"
effect = "allow"
principals = ["svc"]
operations = ["encrypt"]
keys = ["**"]
[rule.context]
tenant = "*"
purpose = "billing"
"#;
        let s = set(&[("c.toml", src)]).unwrap();
        let ask = |pairs: &[(&str, &str)]| {
            let ctx: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            s.decide(&Request {
                principal: "svc",
                operation: Operation::Encrypt,
                key: Some("k"),
                context: &ctx,
            })
            .is_allowed()
        };
        assert!(ask(&[("tenant", "t1"), ("purpose", "billing")]));
        assert!(ask(&[
            ("tenant", "t2"),
            ("purpose", "billing"),
            ("extra", "x")
        ]));
        assert!(!ask(&[("purpose", "billing")]));
        assert!(!ask(&[("tenant", "t1"), ("purpose", "other")]));
        assert!(!ask(&[]));

        let bad = src.replace("[\"encrypt\"]", "[\"encrypt\", \"create\"]");
        let e = set(&[("c.toml", &bad)]).unwrap_err().to_string();
        assert!(e.contains("carries no encryption context"), "{e}");
    }

    #[test]
    fn mfa_strictest_wins() {
        let src = r#"
[[rule]]
id = "plain"
effect = "allow"
principals = ["admin"]
operations = ["rotate", "revoke"]
keys = ["**"]

[[rule]]
id = "dangerous"
effect = "allow"
principals = ["admin"]
operations = ["revoke"]
keys = ["**"]
mfa = true
"#;
        let s = set(&[("m.toml", src)]).unwrap();
        assert_eq!(
            decide(&s, "admin", "revoke", Some("k")).to_string(),
            "allow with MFA by m.toml:9 (dangerous)"
        );
        assert_eq!(
            decide(&s, "admin", "rotate", Some("k")),
            Decision::Allow {
                rule: RuleRef {
                    file: "m.toml".into(),
                    line: 2,
                    id: "plain".into()
                },
                mfa: false
            }
        );
    }
}
