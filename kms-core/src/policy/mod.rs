//! Access policies: reviewed TOML rules saying which principal may do which operation on which
//! key; deny by default, an explicit deny wins, separation of duties checked at load time.
//!
//! Pure: the caller reads the policies directory (every `*.toml` file, in name order) and hands
//! over `(file name, contents)` pairs to [`PolicySet::parse`]; a set that does not parse is
//! refused as a whole, so a broken reload leaves the previous set in force.
//!
//! # Format
//!
//! ```toml
//! [[rule]]
//! id = "payments-encrypt"       # unique across the whole set: [A-Za-z0-9._-]
//! effect = "allow"              # or "deny"
//! principals = ["spiffe://prod/payments/*"]          # exact or glob, at least one
//! operations = ["encrypt", "decrypt", "generate-data-key"]
//! keys = ["payments/**"]        # globs on key names
//! mfa = false                   # optional; true: the request must carry a valid TOTP code
//! [rule.context]                # optional: encryption-context entries that must be present
//! tenant = "*"                  # "*" = any value, anything else = exactly this value
//!
//! [[separation_of_duties]]
//! id = "admin-vs-use"
//! groups = [["create", "rotate"], ["encrypt", "decrypt"]]
//! exempt = ["spiffe://kms.dev/dev"]   # optional, literal principal patterns (dev only!)
//! ```
//!
//! Unknown fields, unknown operation names and malformed globs are refused with the file and
//! line. Further load-time checks, so a rule never silently means less than it says:
//! - an `allow` rule listing an operation that acts on a key must name `keys` (`"**"` for all);
//! - an operation that acts on no key (see [`Operation::needs_key`]) may only appear in a rule
//!   without `keys` or whose `keys` include `"**"`;
//! - `context` conditions are only accepted on rules whose operations all carry an encryption
//!   context (`encrypt`, `decrypt`, `reencrypt`, `generate-data-key`);
//! - rule ids and separation-of-duties ids are unique across all files.
//!
//! A `deny` rule without `keys` denies its operations on every key.
//!
//! # Globs
//!
//! Patterns are split on `/` into segments. `*` matches any run of characters inside one
//! segment (never a `/`); a segment that is exactly `**` matches any number of whole
//! segments, at least one when it ends the pattern: `payments/**` matches `payments/a` and
//! `payments/a/b` but not the key `payments` itself; `a/**/b` matches `a/b` and `a/x/y/b`.
//! A pattern without `*` is an exact name. Principals use the same globs
//! (`spiffe://prod/payments/*` matches `spiffe://prod/payments/api`).
//!
//! # Decision
//!
//! [`PolicySet::decide`]: a rule matches when one of its principals matches, the operation is
//! listed, one of its key globs matches the key (for operations on a key) and every context
//! condition holds. Any matching `deny` → [`Decision::Deny`] naming it; otherwise a matching
//! `allow` → [`Decision::Allow`]; otherwise default deny. If several allows match and one of
//! them requires MFA, MFA is required (the strictest wins, so file order never weakens a
//! rule); the rule reported is then the first one requiring it, else the first match.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

// ---- operations ------------------------------------------------------------------------------

/// One name per RPC, as written in policy files (`generate-data-key`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Encrypt,
    Decrypt,
    Reencrypt,
    GenerateDataKey,
    GenerateRandom,
    Create,
    Read,
    List,
    Rotate,
    Configure,
    Disable,
    Enable,
    Revoke,
    ScheduleDeletion,
    CancelDeletion,
    /// Bring your own key: GetImportParameters and ImportKeyMaterial.
    Import,
    /// Wrap a key's material out to a recipient (ExportKey), for exportable keys only.
    Export,
    Seal,
    Rekey,
    RotateBarrier,
    Backup,
    PolicyRead,
    PolicyReload,
    AuditRead,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 24] = [
        Self::Encrypt,
        Self::Decrypt,
        Self::Reencrypt,
        Self::GenerateDataKey,
        Self::GenerateRandom,
        Self::Create,
        Self::Read,
        Self::List,
        Self::Rotate,
        Self::Configure,
        Self::Disable,
        Self::Enable,
        Self::Revoke,
        Self::ScheduleDeletion,
        Self::CancelDeletion,
        Self::Import,
        Self::Export,
        Self::Seal,
        Self::Rekey,
        Self::RotateBarrier,
        Self::Backup,
        Self::PolicyRead,
        Self::PolicyReload,
        Self::AuditRead,
    ];

    /// The kebab-case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Reencrypt => "reencrypt",
            Self::GenerateDataKey => "generate-data-key",
            Self::GenerateRandom => "generate-random",
            Self::Create => "create",
            Self::Read => "read",
            Self::List => "list",
            Self::Rotate => "rotate",
            Self::Configure => "configure",
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Revoke => "revoke",
            Self::ScheduleDeletion => "schedule-deletion",
            Self::CancelDeletion => "cancel-deletion",
            Self::Import => "import",
            Self::Export => "export",
            Self::Seal => "seal",
            Self::Rekey => "rekey",
            Self::RotateBarrier => "rotate-barrier",
            Self::Backup => "backup",
            Self::PolicyRead => "policy-read",
            Self::PolicyReload => "policy-reload",
            Self::AuditRead => "audit-read",
        }
    }

    /// Whether the operation acts on one named key, so that a rule granting it names keys.
    /// `reencrypt` touches two keys: the server asks for a decision on each.
    pub fn needs_key(self) -> bool {
        !matches!(
            self,
            Self::GenerateRandom
                | Self::List
                | Self::Seal
                | Self::Rekey
                | Self::RotateBarrier
                | Self::Backup
                | Self::PolicyRead
                | Self::PolicyReload
                | Self::AuditRead
        )
    }

    /// Whether requests for this operation carry an encryption context.
    pub fn carries_context(self) -> bool {
        matches!(
            self,
            Self::Encrypt | Self::Decrypt | Self::Reencrypt | Self::GenerateDataKey
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation name that is not one of [`Operation::ALL`]; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOperation(pub String);

impl fmt::Display for UnknownOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown operation {:?}; valid operations: ", self.0)?;
        for (i, op) in Operation::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(op.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownOperation {}

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_string()))
    }
}

// ---- globs -----------------------------------------------------------------------------------

/// Longest accepted pattern, in bytes.
const MAX_PATTERN: usize = 1024;

/// A validated glob on `/`-separated names (see the module docs for the semantics).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    /// Derived from `pattern` by [`Glob::new`], so equality and hashing mean the same as on
    /// the pattern alone.
    shape: Shape,
    /// Length of the literal text before the first `*` (the whole pattern if none): every
    /// matching name starts with it, since `*` never spans a `/`. Derived like `shape`.
    literal: usize,
}

/// Which matcher [`Glob::is_match`] needs. A decision matches the principal and key globs of
/// most rules of the set, so the common shapes are matched in place, without allocating; each
/// gives the same answer as the general matcher (tested against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// No `*`: an exact name.
    Exact,
    /// The only `*` is a final `**` segment (`a/b/**`, `**`): the name starts with the
    /// literal part `a/b/`, which leaves it at least one more segment.
    Prefix,
    /// No `**` segment: the name has as many segments, matched pairwise.
    Segments,
    /// `**` is the last segment and the only `**`: the segments before it match the name's
    /// first segments pairwise, and the name has at least one more.
    TrailingAny,
    /// Any other `**`: the general matcher.
    General,
}

impl Glob {
    /// Parses a pattern. Refused: empty, longer than 1024 bytes, control characters, `**`
    /// that is not a whole segment.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.len() > MAX_PATTERN {
            return Err(format!("pattern longer than {MAX_PATTERN} bytes"));
        }
        if pattern.chars().any(char::is_control) {
            return Err(format!("pattern {pattern:?} contains a control character"));
        }
        if pattern
            .split('/')
            .any(|seg| seg.contains("**") && seg != "**")
        {
            return Err(format!(
                "pattern {pattern:?}: `**` must be a whole segment (`a/**`, `**/b`), \
                 use `*` inside a segment"
            ));
        }
        let literal = pattern.find('*').unwrap_or(pattern.len());
        let any_segments = pattern.split('/').filter(|seg| *seg == "**").count();
        let trailing_any = pattern == "**" || pattern.ends_with("/**");
        let shape = if literal == pattern.len() {
            Shape::Exact
        } else if any_segments == 0 {
            Shape::Segments
        } else if any_segments == 1 && trailing_any && literal == pattern.len() - 2 {
            Shape::Prefix
        } else if any_segments == 1 && trailing_any {
            Shape::TrailingAny
        } else {
            Shape::General
        };
        Ok(Self {
            pattern: pattern.to_string(),
            shape,
            literal,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` matches. Linear in the product of segment counts (no backtracking
    /// blow-up), so it is safe on names from the network.
    pub fn is_match(&self, name: &str) -> bool {
        // Most rules do not match most requests: reject on the literal part first.
        if !name.starts_with(&self.pattern[..self.literal]) {
            return false;
        }
        match self.shape {
            // Pairwise byte equality of equally many segments is string equality.
            Shape::Exact => self.pattern == name,
            // The literal part ends with the `/` before `**`: the rest is one or more segments.
            Shape::Prefix => true,
            Shape::Segments => {
                let mut names = name.split('/');
                self.pattern.split('/').all(|p| {
                    names
                        .next()
                        .is_some_and(|t| segment_match(p.as_bytes(), t.as_bytes()))
                }) && names.next().is_none()
            }
            Shape::TrailingAny => {
                // Invariant: this shape always ends with `/**` (a lone `**` is `Prefix`).
                let prefix = &self.pattern[..self.pattern.len() - 3];
                let mut names = name.split('/');
                prefix.split('/').all(|p| {
                    names
                        .next()
                        .is_some_and(|t| segment_match(p.as_bytes(), t.as_bytes()))
                }) && names.next().is_some()
            }
            Shape::General => self.is_match_general(name),
        }
    }

    /// The matcher for every shape: dynamic programming over pattern and name segments.
    fn is_match_general(&self, name: &str) -> bool {
        let p: Vec<&str> = self.pattern.split('/').collect();
        let t: Vec<&str> = name.split('/').collect();
        let n = t.len();
        // next[j]: does p[i+1..] match t[j..]? Computed from the end of the pattern.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for i in (0..p.len()).rev() {
            let mut cur = vec![false; n + 1];
            if p[i] == "**" {
                let last = i + 1 == p.len();
                for j in (0..=n).rev() {
                    cur[j] = if last {
                        // A trailing `**` takes all the rest, at least one segment.
                        j < n
                    } else {
                        next[j] || (j < n && cur[j + 1])
                    };
                }
            } else {
                for j in 0..n {
                    cur[j] = next[j + 1] && segment_match(p[i].as_bytes(), t[j].as_bytes());
                }
            }
            next = cur;
        }
        next[0]
    }
}

/// `*` matches any run of bytes (the caller has already split on `/`); everything else is
/// literal. Classic greedy matching with one backtrack point: O(len(p) * len(t)) at worst.
fn segment_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", self.pattern)
    }
}

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

// ---- the policy set --------------------------------------------------------------------------

/// A parsed, checked set of rules. Immutable: reload builds a new one.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    rules: Vec<Rule>,
    separation: Vec<SeparationOfDuties>,
}

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

    /// Refuses a set granting one principal pattern operations from two groups of one
    /// declaration.
    ///
    /// Limitation: principal patterns are compared literally. Two different patterns that
    /// match the same identity (`spiffe://prod/*` and `spiffe://prod/a`) are two principals
    /// here, so a conflict split across them is not detected: keep each identity under one
    /// pattern.
    fn check_separation_of_duties(&self) -> Result<(), PolicyError> {
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
    use super::*;

    fn set(files: &[(&str, &str)]) -> Result<PolicySet, PolicyError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        PolicySet::parse(&files)
    }

    fn decide(set: &PolicySet, principal: &str, op: &str, key: Option<&str>) -> Decision {
        let ctx = BTreeMap::new();
        set.decide(&Request {
            principal,
            operation: op.parse().unwrap(),
            key,
            context: &ctx,
        })
    }

    const EXAMPLES: [(&str, &str); 6] = [
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

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), op);
            assert_eq!(op.to_string(), op.as_str());
        }
        let e = "frobnicate".parse::<Operation>().unwrap_err().to_string();
        assert!(
            e.contains("frobnicate") && e.contains("generate-data-key"),
            "{e}"
        );
    }

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
    fn examples_without_exemption_violate_separation_of_duties() {
        let sod = EXAMPLES[4].1.replace("exempt", "# exempt");
        let mut files = EXAMPLES.to_vec();
        files[4].1 = &sod;
        let e = set(&files).unwrap_err().to_string();
        assert!(e.contains("spiffe://kms.dev/dev"), "{e}");
    }

    const BASIC: &str = r#"
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
    fn glob_shapes_agree_with_the_general_matcher() {
        let patterns = [
            "a",
            "a/b",
            "*",
            "a/*",
            "*/b",
            "a*",
            "*a*",
            "a/*/c",
            "a/b*",
            "spiffe://prod/*",
            "spiffe://prod/a*/*",
            "**",
            "/**",
            "a/**",
            "a/*/**",
            "*/**",
            "a//**",
            "a/b/**",
            "spiffe://prod/**",
            "**/b",
            "a/**/b",
            "**/**",
            "a/**/**",
            "**/*/**",
            "é*/**",
        ];
        let names = [
            "",
            "/",
            "//",
            "a",
            "b",
            "ab",
            "ba",
            "a/",
            "/a",
            "a/b",
            "a//b",
            "a/b/",
            "a/b/c",
            "a/x/c",
            "a/x/y/b",
            "ab/c",
            "b/a",
            "a/bc",
            "a/b/c/d",
            "spiffe://prod/api",
            "spiffe://prod/api/x",
            "spiffe://prod",
            "spiffe://prod/",
            "spiffe://prod/ab/c",
            "é",
            "éa/b",
        ];
        let mut shapes = std::collections::BTreeSet::new();
        for p in patterns {
            let g = Glob::new(p).unwrap();
            shapes.insert(format!("{:?}", g.shape));
            for name in names {
                assert_eq!(
                    g.is_match(name),
                    g.is_match_general(name),
                    "pattern {p:?} ({:?}) on {name:?}",
                    g.shape
                );
            }
        }
        assert_eq!(shapes.len(), 5, "every shape is exercised: {shapes:?}");
    }

    #[test]
    fn glob_semantics() {
        let g = |p: &str| Glob::new(p).unwrap();
        assert!(g("payments/*").is_match("payments/a"));
        assert!(!g("payments/*").is_match("payments/a/b"));
        assert!(g("payments/**").is_match("payments/a/b"));
        assert!(g("payments/**").is_match("payments/a"));
        assert!(!g("payments/**").is_match("payments"));
        assert!(!g("payments/**").is_match("paymentsx/a"));
        assert!(g("a/**/b").is_match("a/b"));
        assert!(g("a/**/b").is_match("a/x/y/b"));
        assert!(!g("a/**/b").is_match("a/x/y/c"));
        assert!(g("**").is_match("a"));
        assert!(g("**").is_match("a/b/c"));
        assert!(g("app-*-key").is_match("app-1-key"));
        assert!(!g("app-*-key").is_match("app-1/x-key"));
        assert!(g("*").is_match("anything"));
        assert!(!g("*").is_match("any/thing"));
        assert!(g("exact/name").is_match("exact/name"));
        assert!(!g("exact/name").is_match("exact/name2"));
        assert!(g("spiffe://prod/*").is_match("spiffe://prod/api"));
        assert!(!g("spiffe://prod/*").is_match("spiffe://prod/api/x"));
        assert!(g("a*b*c").is_match("aXbYbZc"));
        assert!(Glob::new("a**").is_err());
        assert!(Glob::new("").is_err());
        // Many stars stay fast on long names.
        let long = "a/".repeat(120) + "b";
        assert!(!g("**/**/**/**/**/c").is_match(&long));
        assert!(!g("*a*a*a*a*a*a*a*c").is_match(&"a".repeat(200)));

        let s = set(&[("p.toml", BASIC)]).unwrap();
        let api = "spiffe://prod/payments/api";
        assert!(decide(&s, api, "encrypt", Some("shared/x/key")).is_allowed());
        assert!(!decide(&s, api, "encrypt", Some("shared/x/y/key")).is_allowed());
        assert!(
            !decide(
                &s,
                "spiffe://prod/payments/a/b",
                "encrypt",
                Some("payments/x")
            )
            .is_allowed()
        );
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
