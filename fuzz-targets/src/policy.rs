//! Target `policy`: `PolicySet::parse` on one file of fuzz text, then decisions on requests
//! built from the parsed rules.
//!
//! Asserts:
//! - a refusal names the file and a line inside it, with a reason;
//! - the same file loaded twice is refused (duplicate ids) exactly when it has a rule or a
//!   separation-of-duties declaration;
//! - every glob matches the name made by writing `x` for each `*` and `**`;
//! - for each rule, a request built to satisfy it (a principal and key its globs match, one of
//!   its operations, its context) is decided consistently: a deny rule's request is denied by a
//!   deny rule, an allow rule's request is never denied by default, an MFA rule's request is
//!   never allowed without MFA, and the rule a decision names exists, has that effect, lists
//!   the operation and matches the principal.

use std::collections::BTreeMap;

use kms_core::policy::{ContextCondition, Decision, Effect, Glob, PolicySet, Request, Rule};

const FILE: &str = "fuzz.toml";
/// Rules checked with requests per input, to keep one run short.
const MAX_RULES: usize = 16;

/// A name that `glob` should match: every `**` segment and every `*` written as `x`.
fn instance(glob: &Glob) -> String {
    let name = glob
        .as_str()
        .split('/')
        .map(|seg| {
            if seg == "**" {
                "x".to_string()
            } else {
                seg.replace('*', "x")
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    assert!(
        glob.is_match(&name),
        "{glob:?} does not match its instance {name:?}"
    );
    name
}

pub fn run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let one = [(FILE.to_string(), text.to_string())];
    let set = match PolicySet::parse(&one) {
        Ok(set) => set,
        Err(e) => {
            assert_eq!(e.file, FILE);
            assert!(
                e.line <= text.matches('\n').count() + 1,
                "{e} is past the end"
            );
            assert!(!e.reason.is_empty(), "an error without a reason");
            let _ = e.to_string();
            return false;
        }
    };

    let twice = [one[0].clone(), (format!("2{FILE}"), text.to_string())];
    let has_ids = !set.rules().is_empty() || !set.separation_of_duties().is_empty();
    match PolicySet::parse(&twice) {
        Ok(_) => assert!(!has_ids, "duplicate ids across files were accepted"),
        Err(e) => assert!(
            has_ids && e.reason.contains("duplicate"),
            "a set without ids refused when loaded twice: {e}"
        ),
    }

    for rule in set.rules().iter().take(MAX_RULES) {
        check_rule(&set, rule);
    }
    true
}

fn check_rule(set: &PolicySet, rule: &Rule) {
    for glob in &rule.keys {
        instance(glob);
    }
    let principal = match rule.principals.first() {
        Some(p) => instance(p),
        None => panic!("rule {} parsed without principals", rule.id),
    };
    for p in &rule.principals[1..] {
        instance(p);
    }
    let context: BTreeMap<String, String> = rule
        .context
        .iter()
        .map(|(k, c)| match c {
            ContextCondition::Present => (k.clone(), "x".to_string()),
            ContextCondition::Equals(v) => (k.clone(), v.clone()),
        })
        .collect();
    let key = rule.keys.first().map_or_else(|| "k".to_string(), instance);
    let _ = set.rules_for_principal(&principal).count();
    let _ = set.rules_for_key(&key).count();

    for &operation in &rule.operations {
        let req = Request {
            principal: &principal,
            operation,
            key: Some(&key),
            context: &context,
        };
        let decision = set.decide(&req);
        check_named_rule(set, &req, &decision);
        match (rule.effect, &decision) {
            (Effect::Deny, Decision::Deny { rule: Some(_) }) => {}
            (Effect::Deny, d) => panic!("a request matching deny rule {} got {d}", rule.id),
            (Effect::Allow, Decision::Deny { rule: None }) => {
                panic!(
                    "a request matching allow rule {} was denied by default",
                    rule.id
                )
            }
            (Effect::Allow, Decision::Allow { mfa, .. }) => {
                assert!(
                    *mfa || !rule.mfa,
                    "MFA rule {} allowed without MFA",
                    rule.id
                )
            }
            (Effect::Allow, Decision::Deny { rule: Some(_) }) => {}
        }
    }
}

/// The rule a decision names exists, has the decision's effect, lists the operation and
/// matches the principal.
fn check_named_rule(set: &PolicySet, req: &Request<'_>, decision: &Decision) {
    let (named, effect, mfa) = match decision {
        Decision::Allow { rule, mfa } => (rule, Effect::Allow, Some(*mfa)),
        Decision::Deny { rule: Some(rule) } => (rule, Effect::Deny, None),
        Decision::Deny { rule: None } => return,
    };
    let Some(rule) = set.rules().iter().find(|r| r.id == named.id) else {
        panic!("{decision} names a rule that is not in the set");
    };
    assert_eq!(rule.location(), *named);
    assert_eq!(rule.effect, effect, "{decision}");
    assert!(rule.operations.contains(&req.operation), "{decision}");
    assert!(rule.applies_to_principal(req.principal), "{decision}");
    if let Some(mfa) = mfa {
        assert_eq!(mfa, rule.mfa, "{decision}");
    }
}
