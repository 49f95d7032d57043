//! Policy decision benchmarks: [`PolicySet::decide`] on a realistic set of 100 rules.
//!
//! Run: `cargo bench -p kms-core --bench policy` (about 4 s). The set is 20 teams × 5 rules,
//! split over 4 files like a policies directory: a glob-principal `allow` for key use, an
//! exact-principal admin `allow` (every 4th with `mfa`), a `deny` of escrow decryption, a
//! context-bound `allow` (`tenant = "*"`, some also `region = "eu"`) and an exact-principal
//! `read`. Each case checks at least 98 of the 100 rules (a deny anywhere wins, so an allow
//! cannot stop early); they differ in how far each rule's checks get.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kms_core::policy::{Decision, Operation, PolicySet, Request};

const TEAMS: usize = 20;
const FILES: usize = 4;

/// The five rules of one team, as a policy author would write them.
fn team_rules(t: usize) -> String {
    let mfa = t.is_multiple_of(4);
    let region = if t.is_multiple_of(3) {
        "region = \"eu\"\n"
    } else {
        ""
    };
    format!(
        r#"
[[rule]]
id = "t{t:02}-use"
effect = "allow"
principals = ["spiffe://prod/team{t:02}/*"]
operations = ["encrypt", "decrypt", "generate-data-key"]
keys = ["team{t:02}/**"]

[[rule]]
id = "t{t:02}-admin"
effect = "allow"
principals = ["spiffe://prod/ops/team{t:02}-admin"]
operations = ["create", "read", "rotate", "disable", "enable"]
keys = ["team{t:02}/**"]
mfa = {mfa}

[[rule]]
id = "t{t:02}-no-escrow-decrypt"
effect = "deny"
principals = ["spiffe://prod/team{t:02}/*"]
operations = ["decrypt", "reencrypt"]
keys = ["team{t:02}/escrow/**"]

[[rule]]
id = "t{t:02}-tenant"
effect = "allow"
principals = ["spiffe://prod/team{t:02}/*", "spiffe://prod/shared/batch"]
operations = ["encrypt", "decrypt"]
keys = ["tenants/*/team{t:02}-*"]
[rule.context]
tenant = "*"
{region}
[[rule]]
id = "t{t:02}-read"
effect = "allow"
principals = ["spiffe://prod/audit/reader-{t:02}"]
operations = ["read"]
keys = ["team{t:02}/**", "shared/team{t:02}-*"]
"#
    )
}

fn hundred_rules() -> PolicySet {
    let per_file = TEAMS / FILES;
    let mut files: Vec<(String, String)> = (0..FILES)
        .map(|f| {
            let body: String = (f * per_file..(f + 1) * per_file).map(team_rules).collect();
            (format!("teams-{f}.toml"), body)
        })
        .collect();
    files.push((
        "separation-of-duties.toml".into(),
        r#"
[[separation_of_duties]]
id = "key-admin-vs-key-use"
groups = [["create", "rotate", "disable", "enable"], ["encrypt", "decrypt", "reencrypt", "generate-data-key"]]
"#
        .into(),
    ));
    let set = PolicySet::parse(&files).expect("the benchmark policy set parses");
    assert_eq!(set.rules().len(), 100);
    set
}

fn decide(c: &mut Criterion) {
    let set = hundred_rules();
    let context: BTreeMap<String, String> = [("tenant", "acme"), ("purpose", "billing")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cases = [
        (
            "allow (rule 96 of 100)",
            Request {
                principal: "spiffe://prod/team19/api",
                operation: Operation::Encrypt,
                key: Some("team19/orders/2026"),
                context: &context,
            },
            "allow",
        ),
        (
            "default deny (known principal, other team's key)",
            Request {
                principal: "spiffe://prod/team07/api",
                operation: Operation::Encrypt,
                key: Some("team12/orders"),
                context: &context,
            },
            "default",
        ),
        (
            "explicit deny (rule 98 of 100)",
            Request {
                principal: "spiffe://prod/team19/api",
                operation: Operation::Decrypt,
                key: Some("team19/escrow/root"),
                context: &context,
            },
            "deny",
        ),
    ];

    let mut group = c.benchmark_group("policy decide, 100 rules");
    for (name, req, want) in cases {
        // Check the case decides as its name says, so the numbers measure the intended path.
        let got = set.decide(&req);
        let ok = match (&got, want) {
            (Decision::Allow { rule, mfa: false }, "allow") => rule.id == "t19-use",
            (Decision::Deny { rule: None }, "default") => true,
            (Decision::Deny { rule: Some(rule) }, "deny") => rule.id == "t19-no-escrow-decrypt",
            _ => false,
        };
        assert!(ok, "{name}: unexpected decision {got}");
        group.bench_function(name, |b| b.iter(|| set.decide(black_box(&req))));
    }
    group.finish();
}

/// Short runs, so that `cargo bench -p kms-core` (mostly `crypto`) stays near a minute. Fewer
/// bootstrap resamples than the default 100,000: the analysis otherwise takes longer than the
/// measurement, and 20,000 still gives stable confidence intervals at this sample size.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20)
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decide
}
criterion_main!(benches);
