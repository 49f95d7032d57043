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
//!
//! Within the crate this module calls nothing outside itself.

mod decision;
mod glob;
mod operation;
mod parse;
mod separation;
#[cfg(test)]
mod test_support;

pub use decision::{ContextCondition, Decision, Effect, PolicySet, Request, Rule, RuleRef};
pub use glob::Glob;
pub use operation::{Operation, UnknownOperation};
pub use parse::PolicyError;
pub use separation::SeparationOfDuties;
