//! `kms-cli completions` and `kms-cli man`: generated from the command tree, offline (run with
//! no server and no connection settings).

use std::process::{Command, Output, Stdio};

/// `kms-cli` with no connection settings in the environment and stdin closed.
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms-cli"));
    for var in [
        "KMS_ADDR",
        "KMS_CA_CERT",
        "KMS_CLIENT_CERT",
        "KMS_CLIENT_KEY",
        "KMS_TLS_SERVER_NAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kms-cli")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "kms-cli {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Every subcommand group and a few leaves, as they appear in completions and man pages.
const COMMANDS: &[&str] = &[
    "operator",
    "key",
    "encrypt",
    "decrypt",
    "envelope",
    "audit",
    "policy",
    "mfa",
    "completions",
    "man",
];

/// The bash script is non-empty, completes every command group and the subcommands of
/// `key` and `operator`, and is valid bash syntax (`bash -n`, when bash is installed).
#[test]
fn bash_completions_name_the_subcommands_and_parse() {
    let script = ok(&["completions", "bash"]);
    assert!(script.len() > 1000, "short script:\n{script}");
    assert!(
        script.contains("complete "),
        "no `complete` line:\n{script}"
    );
    for word in COMMANDS
        .iter()
        .chain(&["schedule-deletion", "rotate-barrier", "verify-backup"])
    {
        assert!(
            script.contains(word),
            "`{word}` missing from the bash script"
        );
    }
    for flag in ["--addr", "--ca-cert", "--format", "--context"] {
        assert!(
            script.contains(flag),
            "`{flag}` missing from the bash script"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kms-cli.bash");
    std::fs::write(&file, &script).expect("write script");
    match Command::new("bash").arg("-n").arg(&file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "bash -n refused the script: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        // No bash on this machine: the content checks above still ran.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot run bash: {e}"),
    }
}

/// zsh and fish scripts are produced too, each in its own shell's syntax; an unknown shell is
/// a usage error (exit 2) listing the shells.
#[test]
fn zsh_and_fish_completions_and_unknown_shell() {
    let zsh = ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef kms-cli"), "zsh:\n{zsh}");
    let fish = ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c kms-cli"), "fish:\n{fish}");
    for script in [&zsh, &fish] {
        assert!(script.contains("set-rotation"));
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// `man --out DIR` creates DIR and writes one roff page per command: kms-cli.1, one per group,
/// one per leaf (kms-cli-key-create.1, …), each with a `.TH` header naming it, a NAME section
/// and the command's example; it lists what it wrote.
#[test]
fn man_writes_a_page_for_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("share").join("man1");
    let listing = ok(&["man", "--out", out_dir.to_str().expect("UTF-8 path")]);
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("man folder created")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        listing.contains(&format!("wrote {} man pages", names.len())),
        "{listing}"
    );
    // Each page and the command whose example it must show.
    let expected = [
        "kms-cli",
        "kms-cli operator",
        "kms-cli operator init",
        "kms-cli operator unseal",
        "kms-cli operator verify-backup",
        "kms-cli key",
        "kms-cli key create",
        "kms-cli key schedule-deletion",
        "kms-cli encrypt",
        "kms-cli decrypt",
        "kms-cli reencrypt",
        "kms-cli datakey",
        "kms-cli random",
        "kms-cli envelope",
        "kms-cli envelope encrypt",
        "kms-cli envelope decrypt",
        "kms-cli audit verify",
        "kms-cli audit head",
        "kms-cli audit hmac",
        "kms-cli policy check",
        "kms-cli policy list",
        "kms-cli policy reload",
        "kms-cli mfa enroll",
        "kms-cli completions",
        "kms-cli man",
    ];
    for command in expected {
        let page = command.replace(' ', "-");
        let file = format!("{page}.1");
        assert!(names.contains(&file), "{file} missing: {names:?}");
        let text = std::fs::read_to_string(out_dir.join(&file)).expect("read page");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(".TH {page} 1 "))),
            "{file} has no roff .TH header:\n{text}"
        );
        assert!(text.contains(".SH NAME"), "{file}:\n{text}");
        assert!(text.contains("\n.SH EXAMPLES\n"), "{file}:\n{text}");
        assert!(text.contains("kms-cli 0.1"), "{file} footer:\n{text}");
        // The example from --help, with roff's escaped hyphens.
        let example = command.replace('-', "\\-");
        assert!(
            text.contains("Example")
                && text
                    .lines()
                    .any(|l| l.ends_with(example.as_str()) || l.contains(&format!("{example} "))),
            "{file} has no example running `{command}`:\n{text}"
        );
    }
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    assert!(names.len() >= 42, "{} pages: {names:?}", names.len());

    // The leaf pages list the global connection options too.
    let create = std::fs::read_to_string(out_dir.join("kms-cli-key-create.1")).expect("read");
    assert!(create.contains("\\-\\-rotation\\-period"), "{create}");
    assert!(create.contains("\\-\\-addr"), "{create}");

    // Written again over existing pages: same set of files.
    ok(&["man", "--out", out_dir.to_str().expect("UTF-8 path")]);
    assert_eq!(
        std::fs::read_dir(&out_dir).expect("list").count(),
        names.len()
    );
}

/// Without --out, `man` prints kms-cli(1) to standard output, listing the command groups.
#[test]
fn man_without_out_prints_the_main_page() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH kms-cli 1 "), "{page}");
    for cmd in COMMANDS {
        assert!(
            page.contains(&format!("kms\\-cli\\-{}(1)", cmd.replace('-', "\\-"))),
            "kms-cli-{cmd}(1) not referenced:\n{page}"
        );
    }
}

/// An output folder that cannot be created is a local error (exit 2) naming it.
#[test]
fn man_into_an_impossible_folder_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let target = file.join("man1");
    let out = run(&["man", "--out", target.to_str().expect("UTF-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(target.to_str().expect("UTF-8")), "{err}");
}
