//! `kms-cli audit verify` over the logs of several nodes: two real servers with different
//! `[audit] node` names write one chain each; the verifier groups the files by node, orders
//! each node's files by seq (they may be given in any order), and names a tampered line or a
//! missing file of one node as `FILE:LINE: reason`.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kms_tests::{Installation, Server, bin, start_unsealed};

/// A node that ran and stopped: its installation (its log files), its sealed head file.
struct Node {
    inst: Installation,
    head: PathBuf,
}

impl Node {
    /// The node's log files, oldest first: `audit.log.<last seq>` (zero-padded, so name order
    /// is seq order), then `audit.log`.
    fn files(&self) -> Vec<PathBuf> {
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(self.inst.root.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("audit.log.")
            })
            .collect();
        rotated.sort();
        rotated.push(self.inst.root.path().join("audit.log"));
        rotated
    }
}

/// Starts a server whose records name `node`, makes `calls` requests, exports its sealed head
/// (which must name the node), makes a few more requests (records after the head are fine)
/// and stops it cleanly.
async fn run_node(node: &str, extra: &str, calls: usize) -> Node {
    let inst = Installation::with_config(&format!("[audit]\nnode = \"{node}\"\n{extra}"));
    let mut share = None;
    let server: Server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    for _ in 0..calls {
        c.status().await.unwrap();
    }
    let out = server.cli(&["audit", "head"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        head["node"], node,
        "the exported head names its node: {head}"
    );
    let head_file = inst.root.path().join(format!("head-{node}.json"));
    std::fs::write(&head_file, &out.stdout).unwrap();
    for _ in 0..3 {
        c.status().await.unwrap();
    }
    drop(c);
    assert!(server.terminate(), "{node} did not exit cleanly on SIGTERM");
    Node {
        inst,
        head: head_file,
    }
}

fn verify(files: &[PathBuf], heads: &[&Path], json: bool) -> Output {
    let mut cmd = Command::new(bin("kms-cli"));
    if json {
        cmd.args(["--format", "json"]);
    }
    cmd.args(["audit", "verify"]).args(files);
    for h in heads {
        cmd.arg("--head").arg(h);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fixed shuffle: no node's files oldest first, the two nodes interleaved.
fn shuffled(a: &[PathBuf], b: &[PathBuf]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = a.iter().rev().cloned().collect();
    for (i, f) in b.iter().rev().enumerate() {
        all.insert((2 * i + 1).min(all.len()), f.clone());
    }
    all
}

/// Copies `files` into a fresh folder (same names), for an edit that leaves the originals.
fn copies(dir: &Path, files: &[PathBuf]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    files
        .iter()
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            to
        })
        .collect()
}

/// Two nodes' logs verify as two chains, files given in any order, against each node's
/// sealed head; a tampered line in node B's file, a record naming another node, and a missing
/// middle file of node A are each named as `FILE:LINE: reason` (exit 1), while the other node
/// still verifies. [SNC 12.7: protect the logs' integrity — modification and deletion of
/// records detectable, on every node]
#[tokio::test]
async fn two_nodes_logs_verify_per_node_and_damage_is_named() {
    // Node A rotates often (small files), so that a middle file can go missing.
    let a = run_node("kms-a", "max_bytes = 3000\n", 40).await;
    let b = run_node("kms-b", "", 6).await;
    let (fa, fb) = (a.files(), b.files());
    assert!(fa.len() >= 3, "node A did not rotate enough: {fa:?}");
    let all = shuffled(&fa, &fb);
    assert_ne!(all[0], fa[0], "not shuffled: {all:?}");

    // All files, shuffled, both heads: OK, one line per node.
    let out = verify(&all, &[&a.head, &b.head], false);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let node_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("OK node "))
        .collect();
    assert_eq!(node_lines.len(), 2, "{stdout}");
    assert!(node_lines[0].starts_with("OK node kms-a: "), "{stdout}");
    assert!(node_lines[1].starts_with("OK node kms-b: "), "{stdout}");
    assert!(stdout.contains("reaches the sealed head"), "{stdout}");
    // The same as JSON: one entry per node, its records and files in seq order.
    let out = verify(&all, &[&b.head, &a.head], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{v}");
    let count = |files: &[PathBuf]| -> u64 {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap().lines().count() as u64)
            .sum()
    };
    for (n, name, files) in [(&nodes[0], "kms-a", &fa), (&nodes[1], "kms-b", &fb)] {
        assert_eq!(n["node"], name, "{v}");
        assert_eq!(n["ok"], true, "{v}");
        assert_eq!(n["sealed_head_checked"], true, "{v}");
        assert_eq!(n["records"].as_u64(), Some(count(files)), "{v}");
        let order: Vec<PathBuf> = n["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| PathBuf::from(f.as_str().unwrap()))
            .collect();
        assert_eq!(&order, files, "files not put in seq order");
    }
    assert_eq!(v["records"].as_u64(), Some(count(&fa) + count(&fb)), "{v}");

    // A head that does not name its node is ambiguous with two nodes: a usage error.
    let old_head = a.inst.root.path().join("head-without-node.json");
    let mut h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a.head).unwrap()).unwrap();
    h.as_object_mut().unwrap().remove("node");
    std::fs::write(&old_head, h.to_string()).unwrap();
    let out = verify(&all, &[&old_head], false);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not say which node"),
        "{}",
        text(&out.stderr)
    );

    // A tampered line in node B's file: named with its file and line; node A still verifies.
    let tmp = tempfile::tempdir().unwrap();
    let tb = copies(&tmp.path().join("b"), &fb);
    let target = tb.last().unwrap().clone();
    let body = std::fs::read_to_string(&target).unwrap();
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    assert!(lines.len() >= 4, "{body}");
    lines[1] = lines[1].replacen("\"outcome\":\"ok\"", "\"outcome\":\"error\"", 1);
    assert_ne!(lines[1], body.lines().nth(1).unwrap(), "line 2 not edited");
    std::fs::write(&target, lines.join("\n") + "\n").unwrap();
    let out = verify(&shuffled(&fa, &tb), &[&a.head, &b.head], false);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = format!(
        "{}:2: hash of this line does not match prev of {}:3",
        target.display(),
        target.display()
    );
    assert!(err.contains(&at), "expected {at:?} in:\n{err}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("OK node kms-a: "), "{stdout}");
    assert!(stdout.contains("FAILED node kms-b: "), "{stdout}");

    // A record that names another node in node B's file (its last line: the chain alone
    // cannot see an edit there without the head) is named too.
    let tb = copies(&tmp.path().join("b2"), &fb);
    let target = tb.last().unwrap().clone();
    let body = std::fs::read_to_string(&target).unwrap();
    let n = body.lines().count();
    let last = body.lines().last().unwrap();
    let forged = last.replacen("\"node\":\"kms-b\"", "\"node\":\"kms-a\"", 1);
    assert_ne!(forged, last);
    let mut lines: Vec<&str> = body.lines().collect();
    lines[n - 1] = &forged;
    std::fs::write(&target, lines.join("\n") + "\n").unwrap();
    let out = verify(&shuffled(&fa, &tb), &[], false);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:{n}: this record names node \"kms-a\"",
            target.display()
        )),
        "{err}"
    );

    // A middle file of node A missing: the gap is named at the next file's first line.
    let mut gap = fa.clone();
    let missing = gap.remove(1);
    let last_seq = |f: &Path| -> u64 {
        let body = std::fs::read_to_string(f).unwrap();
        let v: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
        v["seq"].as_u64().unwrap()
    };
    let first_seq = |f: &Path| -> u64 {
        let body = std::fs::read_to_string(f).unwrap();
        let v: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        v["seq"].as_u64().unwrap()
    };
    let (before, after) = (last_seq(&gap[0]), first_seq(&gap[1]));
    assert_eq!(first_seq(&missing), before + 1);
    let out = verify(&shuffled(&gap, &fb), &[&a.head, &b.head], false);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = format!(
        "{}:1: seq {after} follows seq {before}, the last record of {}",
        gap[1].display(),
        gap[0].display()
    );
    assert!(err.contains(&at), "expected {at:?} in:\n{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(
        text(&out.stdout).contains("OK node kms-b: "),
        "{}",
        text(&out.stdout)
    );

    // The same file given twice: an overlap, named as such.
    let mut twice = fa.clone();
    twice.push(fa[1].clone());
    let out = verify(&twice, &[], false);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the files overlap"), "{err}");
}
