//! Loading a policy set: the TOML documents, their load-time checks, and errors naming file and
//! line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::decision::{ContextCondition, Effect, PolicySet, Rule};
use super::glob::Glob;
use super::operation::{Operation, UnknownOperation};
use super::separation::SeparationOfDuties;

// ---- errors ----------------------------------------------------------------------------------

/// Why a policy set was refused: `file:line: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when the parser could not point at a line.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicySet {
    /// Parses and checks a whole set. `files`: `(file name, contents)` pairs, e.g. every
    /// `*.toml` of the policies directory in name order; that order is the rules' order.
    ///
    /// Returns the first problem found, naming file and line; nothing is partially loaded.
    pub fn parse(files: &[(String, String)]) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::default();
        let mut rule_ids: HashMap<String, (String, usize)> = HashMap::new();
        let mut sod_ids: HashMap<String, (String, usize)> = HashMap::new();
        for (file, src) in files {
            let at = |offset: usize, reason: String| PolicyError {
                file: file.clone(),
                line: line_of(src, offset),
                reason,
            };
            let raw: RawFile = toml::from_str(src).map_err(|e| PolicyError {
                file: file.clone(),
                line: e.span().map_or(0, |s| line_of(src, s.start)),
                reason: e.message().trim_end().to_string(),
            })?;
            for raw_rule in raw.rule {
                let rule = convert_rule(file, src, raw_rule)?;
                if let Some((f, l)) = rule_ids.get(&rule.id) {
                    return Err(at(
                        line_start(src, rule.line),
                        format!("duplicate rule id {:?}, already used at {f}:{l}", rule.id),
                    ));
                }
                rule_ids.insert(rule.id.clone(), (file.clone(), rule.line));
                set.rules.push(rule);
            }
            for raw_sod in raw.separation_of_duties {
                let sod = convert_sod(file, src, raw_sod)?;
                if let Some((f, l)) = sod_ids.get(&sod.id) {
                    return Err(at(
                        line_start(src, sod.line),
                        format!(
                            "duplicate separation_of_duties id {:?}, already used at {f}:{l}",
                            sod.id
                        ),
                    ));
                }
                sod_ids.insert(sod.id.clone(), (file.clone(), sod.line));
                set.separation.push(sod);
            }
        }
        set.check_separation_of_duties()?;
        Ok(set)
    }

    /// Reads every `*.toml` file of `dir`, in name order, and parses them as one set.
    /// Errors name the file and line (or the directory if it cannot be read).
    pub fn load_dir(dir: &std::path::Path) -> Result<PolicySet, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read policies directory {}: {e}", dir.display()))?;
        let mut paths: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read policy file {}: {e}", p.display()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, text));
        }
        PolicySet::parse(&files).map_err(|e| format!("policies in {}: {e}", dir.display()))
    }
}

// ---- TOML ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    separation_of_duties: Vec<Spanned<RawSod>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    effect: Effect,
    principals: Vec<Spanned<String>>,
    operations: Vec<Spanned<String>>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    #[serde(default)]
    mfa: bool,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSod {
    id: Spanned<String>,
    groups: Vec<Vec<Spanned<String>>>,
    #[serde(default)]
    exempt: Vec<String>,
}

/// 1-based line number of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Byte offset of the start of a 1-based line (inverse of [`line_of`] for error helpers).
fn line_start(src: &str, line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    src.match_indices('\n')
        .nth(line - 2)
        .map_or(src.len(), |(i, _)| i + 1)
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "invalid id {id:?}: use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn parse_op(file: &str, src: &str, name: &Spanned<String>) -> Result<Operation, PolicyError> {
    name.get_ref()
        .parse()
        .map_err(|e: UnknownOperation| PolicyError {
            file: file.to_string(),
            line: line_of(src, name.span().start),
            reason: e.to_string(),
        })
}

fn convert_rule(file: &str, src: &str, raw: Spanned<RawRule>) -> Result<Rule, PolicyError> {
    let line = line_of(src, raw.span().start);
    let raw = raw.into_inner();
    let err_at = |offset: usize, reason: String| PolicyError {
        file: file.to_string(),
        line: line_of(src, offset),
        reason,
    };
    let id = raw.id.get_ref().clone();
    check_id(&id).map_err(|r| err_at(raw.id.span().start, r))?;
    let in_rule = |reason: String| PolicyError {
        file: file.to_string(),
        line,
        reason: format!("rule {id:?}: {reason}"),
    };

    if raw.principals.is_empty() {
        return Err(in_rule(
            "`principals` is empty: name at least one principal (exact or glob)".into(),
        ));
    }
    let principals = raw
        .principals
        .iter()
        .map(|p| Glob::new(p.get_ref()).map_err(|r| err_at(p.span().start, r)))
        .collect::<Result<Vec<_>, _>>()?;

    if raw.operations.is_empty() {
        return Err(in_rule("`operations` is empty".into()));
    }
    let mut operations = Vec::with_capacity(raw.operations.len());
    for name in &raw.operations {
        let op = parse_op(file, src, name)?;
        if !operations.contains(&op) {
            operations.push(op);
        }
    }

    let keys = raw
        .keys
        .iter()
        .map(|k| Glob::new(k.get_ref()).map_err(|r| err_at(k.span().start, r)))
        .collect::<Result<Vec<_>, _>>()?;
    if raw.effect == Effect::Allow
        && keys.is_empty()
        && let Some(op) = operations.iter().find(|op| op.needs_key())
    {
        return Err(in_rule(format!(
            "allows `{op}`, which acts on a key, but names no `keys`: \
             add `keys = [...]` (\"**\" for every key)"
        )));
    }
    if !keys.is_empty()
        && !keys.iter().any(|g| g.as_str() == "**")
        && let Some(op) = operations.iter().find(|op| !op.needs_key())
    {
        return Err(in_rule(format!(
            "`{op}` acts on no key, so these `keys` would never let it match: \
             put it in a rule without `keys`"
        )));
    }

    let mut context = BTreeMap::new();
    if !raw.context.is_empty()
        && let Some(op) = operations.iter().find(|op| !op.carries_context())
    {
        return Err(in_rule(format!(
            "`context` conditions, but `{op}` carries no encryption context \
             (only encrypt, decrypt, reencrypt, generate-data-key do)"
        )));
    }
    for (k, v) in raw.context {
        if k.is_empty() {
            return Err(in_rule("empty `context` key".into()));
        }
        let cond = if v == "*" {
            ContextCondition::Present
        } else {
            ContextCondition::Equals(v)
        };
        context.insert(k, cond);
    }

    Ok(Rule {
        id,
        file: file.to_string(),
        line,
        effect: raw.effect,
        principals,
        operations,
        keys,
        mfa: raw.mfa,
        context,
    })
}

fn convert_sod(
    file: &str,
    src: &str,
    raw: Spanned<RawSod>,
) -> Result<SeparationOfDuties, PolicyError> {
    let line = line_of(src, raw.span().start);
    let raw = raw.into_inner();
    let id = raw.id.get_ref().clone();
    check_id(&id).map_err(|reason| PolicyError {
        file: file.to_string(),
        line: line_of(src, raw.id.span().start),
        reason,
    })?;
    let in_decl = |reason: String| PolicyError {
        file: file.to_string(),
        line,
        reason: format!("separation_of_duties {id:?}: {reason}"),
    };
    if raw.groups.len() < 2 {
        return Err(in_decl("needs at least two `groups`".into()));
    }
    let mut groups: Vec<Vec<Operation>> = Vec::with_capacity(raw.groups.len());
    for raw_group in &raw.groups {
        if raw_group.is_empty() {
            return Err(in_decl("empty group".into()));
        }
        let mut group = Vec::with_capacity(raw_group.len());
        for name in raw_group {
            let op = parse_op(file, src, name)?;
            if groups.iter().any(|g| g.contains(&op)) {
                return Err(in_decl(format!(
                    "`{op}` is in two groups: groups must not overlap"
                )));
            }
            if !group.contains(&op) {
                group.push(op);
            }
        }
        groups.push(group);
    }
    Ok(SeparationOfDuties {
        id,
        file: file.to_string(),
        line,
        groups,
        exempt: raw.exempt,
    })
}

#[cfg(test)]
mod tests {
    use crate::policy::test_support::*;

    #[test]
    fn broken_toml_names_file_and_line() {
        let src = "[[rule]]\nid = \"x\"\neffect = \"allow\n";
        let e = set(&[("broken.toml", src)]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("broken.toml", 3), "{e}");
        assert!(e.to_string().starts_with("broken.toml:3: "), "{e}");
    }

    #[test]
    fn unknown_operation_names_line() {
        let src = BASIC.replace(
            "[\"encrypt\", \"decrypt\"]",
            "[\"encrypt\",\n  \"decrypd\"]",
        );
        let e = set(&[("p.toml", &src)]).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(
            e.reason.contains("decrypd") && e.reason.contains("valid operations"),
            "{e}"
        );
    }

    #[test]
    fn structural_mistakes_are_refused() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "keyz = [\"a\"]",
                "keys = [\"payments/**\", \"shared/*/key\"]",
                8,
                "keyz",
            ),
            (
                "keys = [\"payments/**\", \"shared/*/key\"]",
                "",
                2,
                "names no `keys`",
            ),
            (
                "principals = [\"spiffe://prod/payments/*\"]",
                "principals = []",
                2,
                "`principals` is empty",
            ),
            ("effect = \"allow\"", "effect = \"permit\"", 4, "permit"),
            ("effect = \"allow\"", "", 2, "missing field `effect`"),
            (
                "[\"encrypt\", \"decrypt\"]",
                "[\"encrypt\", \"list\"]",
                2,
                "acts on no key",
            ),
            (
                "keys = [\"payments/**\"",
                "keys = [\"payments**\"",
                7,
                "whole segment",
            ),
        ];
        for &(from, to, line, needle) in cases {
            // The first case adds an unknown field next to the real one.
            let src = if from.starts_with("keyz") {
                BASIC.replacen(to, &format!("{to}\n{from}"), 1)
            } else {
                BASIC.replacen(from, to, 1)
            };
            let e = set(&[("p.toml", &src)]).unwrap_err();
            assert!(e.reason.contains(needle), "{needle}: {e}");
            assert_eq!(e.line, line, "{needle}: {e}");
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let e = set(&[("a.toml", BASIC), ("b.toml", BASIC)]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("b.toml", 2), "{e}");
        assert!(
            e.reason.contains("duplicate rule id \"use\"") && e.reason.contains("a.toml:2"),
            "{e}"
        );
    }
}
