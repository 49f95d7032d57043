//! Separation of duties: the declarations, and the load-time check that no principal pattern is
//! granted operations from two incompatible groups.

use std::collections::BTreeMap;

use super::decision::{Effect, PolicySet, Rule};
use super::operation::Operation;
use super::parse::PolicyError;

/// One `[[separation_of_duties]]` declaration: no principal pattern may be granted operations
/// from two of its groups.
#[derive(Clone, Debug)]
pub struct SeparationOfDuties {
    pub id: String,
    pub file: String,
    pub line: usize,
    /// At least two groups, each non-empty, pairwise disjoint.
    pub groups: Vec<Vec<Operation>>,
    /// Principal patterns (compared literally) this declaration does not apply to.
    pub exempt: Vec<String>,
}

impl PolicySet {
    /// Refuses a set granting one principal pattern operations from two groups of one
    /// declaration.
    ///
    /// Limitation: principal patterns are compared literally. Two different patterns that
    /// match the same identity (`spiffe://prod/*` and `spiffe://prod/a`) are two principals
    /// here, so a conflict split across them is not detected: keep each identity under one
    /// pattern.
    pub(super) fn check_separation_of_duties(&self) -> Result<(), PolicyError> {
        for sod in &self.separation {
            // principal pattern -> operation -> first allow rule granting it
            let mut grants: BTreeMap<&str, BTreeMap<Operation, &Rule>> = BTreeMap::new();
            for rule in self.rules.iter().filter(|r| r.effect == Effect::Allow) {
                for p in &rule.principals {
                    if sod.exempt.iter().any(|e| e == p.as_str()) {
                        continue;
                    }
                    let ops = grants.entry(p.as_str()).or_default();
                    for op in &rule.operations {
                        ops.entry(*op).or_insert(rule);
                    }
                }
            }
            for (principal, ops) in &grants {
                let mut hits = sod
                    .groups
                    .iter()
                    .filter_map(|g| g.iter().find_map(|op| ops.get(op).map(|r| (*op, *r))));
                if let (Some((op_a, a)), Some((op_b, b))) = (hits.next(), hits.next()) {
                    return Err(PolicyError {
                        file: b.file.clone(),
                        line: b.line,
                        reason: format!(
                            "separation of duties {:?} ({}:{}) violated: principal {principal:?} \
                             is granted `{op_a}` by {} and `{op_b}` by {}, which belong to \
                             incompatible groups",
                            sod.id,
                            sod.file,
                            sod.line,
                            a.location(),
                            b.location(),
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::test_support::*;

    #[test]
    fn examples_without_exemption_violate_separation_of_duties() {
        let sod = EXAMPLES[4].1.replace("exempt", "# exempt");
        let mut files = EXAMPLES.to_vec();
        files[4].1 = &sod;
        let e = set(&files).unwrap_err().to_string();
        assert!(e.contains("spiffe://kms.dev/dev"), "{e}");
    }

    const SOD: &str = r#"
[[separation_of_duties]]
id = "admin-vs-use"
groups = [["create", "rotate"], ["encrypt", "decrypt"]]
"#;

    #[test]
    fn separation_of_duties_violation_names_principal_and_rules() {
        let admin = r#"
[[rule]]
id = "admin"
effect = "allow"
principals = ["spiffe://prod/ops", "spiffe://prod/payments/*"]
operations = ["create"]
keys = ["**"]
"#;
        let e = set(&[("a.toml", admin), ("p.toml", BASIC), ("s.toml", SOD)]).unwrap_err();
        let msg = e.to_string();
        for needle in [
            "admin-vs-use",
            "s.toml:2",
            "spiffe://prod/payments/*",
            "a.toml:2 (admin)",
            "p.toml:2 (use)",
        ] {
            assert!(msg.contains(needle), "{needle}: {msg}");
        }
        // Without the overlapping principal the set loads; exemption also lifts it.
        let ok = admin.replace(", \"spiffe://prod/payments/*\"", "");
        assert!(set(&[("a.toml", &ok), ("p.toml", BASIC), ("s.toml", SOD)]).is_ok());
        let exempt = format!("{SOD}exempt = [\"spiffe://prod/payments/*\"]\n");
        assert!(set(&[("a.toml", admin), ("p.toml", BASIC), ("s.toml", &exempt)]).is_ok());
        // A deny rule is no grant.
        let deny = admin.replace("\"allow\"", "\"deny\"");
        assert!(set(&[("a.toml", &deny), ("p.toml", BASIC), ("s.toml", SOD)]).is_ok());
        // Overlapping groups are a mistake in the declaration itself.
        let overlap = SOD.replace("\"decrypt\"]", "\"decrypt\", \"create\"]");
        let e = set(&[("s.toml", &overlap)]).unwrap_err();
        assert!(e.reason.contains("two groups"), "{e}");
    }
}
