//! `kms-cli completions SHELL` and `kms-cli man [--out DIR]`: shell completion scripts and
//! man pages, generated from the same clap command tree that parses the command line, so they
//! never drift from it. Both are offline: nothing connects.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use serde_json::json;

use crate::output::{self, Format};
use crate::{Cli, Failure};

/// The binary's name, as completions and man pages call it.
const BIN: &str = "kms-cli";

/// Writes the completion script for `shell` to standard output.
pub(crate) fn completions(shell: Shell) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    output::stdout(&script)
}

/// Without `out`: prints kms-cli(1) to standard output. With `out`: writes kms-cli(1) and one
/// page per subcommand (kms-cli-key-create(1), …) into that folder, creating it if needed, and
/// lists the files.
pub(crate) fn man(out: Option<&Path>, fmt: Format) -> Result<(), Failure> {
    let Some(dir) = out else {
        let page = render(&clap_mangen::Man::new(tree()).source(source()))?;
        return output::stdout(&page);
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::usage(format!(
            "cannot create {}: {e} (check the path and that its parent is writable)",
            dir.display()
        ))
    })?;
    let mut written = Vec::new();
    write_pages(tree(), dir, &mut written)?;
    match fmt {
        Format::Json => output::json(&json!({
            "dir": dir.display().to_string(),
            "pages": written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        })),
        Format::Human => {
            let mut text = format!("wrote {} man pages to {}:\n", written.len(), dir.display());
            for p in &written {
                text.push_str(&format!("  {}\n", p.display()));
            }
            output::print(&text)
        }
    }
}

/// A page as roff. Every command's `after_help` starts with its examples, so the section
/// clap_mangen calls EXTRA is titled EXAMPLES, as man pages name it.
fn render(man: &clap_mangen::Man) -> Result<Vec<u8>, Failure> {
    let mut page = Vec::new();
    man.render(&mut page)
        .map_err(|e| Failure::usage(format!("cannot render a man page: {e}")))?;
    let text = String::from_utf8_lossy(&page).replace("\n.SH EXTRA\n", "\n.SH EXAMPLES\n");
    Ok(text.into_bytes())
}

/// What each page's footer names as its source: `kms-cli 0.1.0`.
fn source() -> String {
    format!("{BIN} {}", env!("CARGO_PKG_VERSION"))
}

/// The command tree as the man pages show it: built (so each subcommand knows its full name,
/// `kms-cli-key-create`, and carries the global options), without clap's `help` subcommand.
fn tree() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes the page of `cmd`, then those of its visible subcommands, depth first.
fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    // The footer names the program and version on every page, not the subcommand's name.
    let man = clap_mangen::Man::new(cmd).source(source());
    let path = dir.join(man.get_filename());
    let page = render(&man)?;
    std::fs::write(&path, page)
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    written.push(path);
    for sub in subs {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
