//! `kms-cli policy reload | check | list`: reload the server's policies; ask offline what a
//! policies directory allows, and why (file:line of the deciding rule).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use kms_client::proto as pb;
use kms_core::policy::{Effect, Operation, PolicySet, Request, Rule};
use serde_json::json;

use crate::args::{KeyValue, pairs_to_map};
use crate::output::{self, Format};
use crate::{Conn, Failure};

#[derive(Subcommand)]
pub(crate) enum Policy {
    /// Ask the server to re-read its policies directory (needs the `policy-reload` grant).
    ///
    /// A broken file is refused with its file and line, and the policies in force stay.
    /// Sending SIGHUP to kms-server does the same.
    #[command(after_help = "Example:\n  kms-cli policy reload")]
    Reload,
    /// Offline: the decision for one request, and the rule (file:line) that made it.
    #[command(after_help = "Example:\n  \
        kms-cli policy check --dir policies --principal spiffe://kms.dev/service \\\n    \
        --operation encrypt --key app/orders --context tenant=acme")]
    Check {
        /// The policies directory to read (the server's `policies` setting).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The principal: the client certificate's URI SAN, DNS SAN or CN.
        #[arg(long, value_name = "PRINCIPAL")]
        principal: String,
        /// The operation, e.g. encrypt, decrypt, create, rotate, seal.
        #[arg(long, value_name = "OPERATION")]
        operation: String,
        /// The key name, for operations on a key.
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// An encryption-context pair of the request (repeat for several).
        #[arg(long, value_name = "KEY=VALUE")]
        context: Vec<KeyValue>,
    },
    /// Offline: every rule that gives rights to a principal, or on a key (SecNumCloud 9.3:
    /// "all rights of this identity" and "who can access this resource").
    #[command(after_help = "Examples:\n  \
        kms-cli policy list --dir policies --principal spiffe://kms.dev/admin\n  \
        kms-cli policy list --dir policies --key app/orders")]
    List {
        /// The policies directory to read.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Rules that apply to this principal.
        #[arg(
            long,
            value_name = "PRINCIPAL",
            conflicts_with = "key",
            required_unless_present = "key"
        )]
        principal: Option<String>,
        /// Rules that apply to this key.
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
    },
}

pub(crate) async fn run(cmd: Policy, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Policy::Reload => {
            let client = crate::connect(conn).await?;
            let r = client
                .call(client.policy().reload(pb::ReloadPoliciesRequest {}))
                .await?;
            match fmt {
                Format::Json => output::json(&json!({"rules": r.rules})),
                Format::Human => {
                    output::print(&format!("policies reloaded: {} rules in force\n", r.rules))
                }
            }
        }
        Policy::Check {
            dir,
            principal,
            operation,
            key,
            context,
        } => {
            let set = load(&dir)?;
            let operation: Operation = operation
                .parse()
                .map_err(|e| Failure::usage(format!("{e}")))?;
            let context: BTreeMap<String, String> =
                pairs_to_map(&context, "--context")?.into_iter().collect();
            let decision = set.decide(&Request {
                principal: &principal,
                operation,
                key: key.as_deref(),
                context: &context,
            });
            match fmt {
                Format::Json => output::json(&json!({
                    "allowed": decision.is_allowed(),
                    "decision": decision.to_string(),
                })),
                Format::Human => output::print(&format!("{decision}\n")),
            }
        }
        Policy::List {
            dir,
            principal,
            key,
        } => {
            let set = load(&dir)?;
            let rules: Vec<&Rule> = match (&principal, &key) {
                (Some(p), _) => set.rules_for_principal(p).collect(),
                (None, Some(k)) => set.rules_for_key(k).collect(),
                (None, None) => Vec::new(),
            };
            match fmt {
                Format::Json => output::json(&json!(
                    rules.iter().map(|r| rule_json(r)).collect::<Vec<_>>()
                )),
                Format::Human => {
                    let mut text = String::new();
                    for r in &rules {
                        text.push_str(&format!(
                            "{}  {}  principals: {}  operations: {}  keys: {}{}\n",
                            r.location(),
                            effect(r),
                            join(&r.principals),
                            join(&r.operations),
                            if r.keys.is_empty() {
                                "-".to_string()
                            } else {
                                join(&r.keys)
                            },
                            if r.mfa { "  (mfa)" } else { "" }
                        ));
                    }
                    if rules.is_empty() {
                        text.push_str("no rule applies (default deny)\n");
                    }
                    output::print(&text)
                }
            }
        }
    }
}

fn load(dir: &std::path::Path) -> Result<PolicySet, Failure> {
    PolicySet::load_dir(dir).map_err(Failure::usage)
}

fn effect(r: &Rule) -> &'static str {
    match r.effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn rule_json(r: &Rule) -> serde_json::Value {
    json!({
        "rule": r.location().to_string(),
        "effect": effect(r),
        "principals": r.principals.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "operations": r.operations.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        "keys": r.keys.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "mfa": r.mfa,
    })
}
