//! `kms-cli operator …`: initialise, unseal, seal, status, rekey, barrier rotation, and
//! backups (taken from the server, verified offline).

use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use kms_client::proto::StatusResponse;
use serde_json::json;
use zeroize::Zeroizing;

use crate::output::{self, Format, TempOutput};
use crate::{Conn, Failure};

#[derive(Subcommand)]
pub(crate) enum Operator {
    /// Initialise a new KMS and print (or encrypt to officers) the unseal shares.
    #[command(
        after_help = "Examples:\n  kms-cli operator init --shares 5 --threshold 3\n  \
        kms-cli operator init --shares 2 --threshold 2 --officer-key age1… --officer-key age1… --out-dir shares/"
    )]
    Init {
        /// Number of shares (n), one per officer; 1..=32.
        #[arg(long, value_name = "N")]
        shares: u32,
        /// Shares needed to unseal (t); at least 2 unless n = 1.
        #[arg(long, value_name = "T")]
        threshold: u32,
        /// An officer's age X25519 recipient (age1…), given n times: share i is encrypted to the
        /// i-th key and written to OUT_DIR/share-i.age; no share is printed.
        #[arg(long, value_name = "AGE_RECIPIENT")]
        officer_key: Vec<String>,
        /// Where encrypted shares go (with --officer-key).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
    },
    /// Submit one unseal share (prompted without echo when not given), or reset progress.
    #[command(
        after_help = "Examples:\n  kms-cli operator unseal              # prompts, no echo\n  \
        kms-cli operator unseal --expect-installation sha256:3f1c…   # refuses an impostor\n  \
        kms-cli operator unseal --share-file share-2.age --identity officer2.key\n  \
        kms-cli operator unseal --reset\n\n\
        With --expect-installation (or KMS_EXPECT_INSTALLATION), the server's status is asked \
        first and the share is sent only if its installation fingerprint is the one given; \
        otherwise kms-cli exits 1 (refused) and nothing is sent."
    )]
    Unseal {
        /// The share text (kms1-…). Prefer the prompt: arguments end up in shell history.
        #[arg(value_name = "SHARE", conflicts_with_all = ["reset", "share_file"])]
        share: Option<String>,
        /// Read the share from a file (age-encrypted if --identity is given).
        #[arg(long, value_name = "FILE", conflicts_with = "reset")]
        share_file: Option<PathBuf>,
        /// age identity file used to decrypt --share-file.
        #[arg(long, value_name = "FILE", requires = "share_file")]
        identity: Option<PathBuf>,
        /// Discard the shares submitted so far.
        #[arg(long)]
        reset: bool,
        /// The installation fingerprint (sha256:…, as `operator init` printed it) the server
        /// must report before the share is sent; a different one exits 1 (refused) without
        /// sending anything. Not checked with --reset.
        #[arg(long, value_name = "FINGERPRINT", env = "KMS_EXPECT_INSTALLATION")]
        expect_installation: Option<String>,
    },
    /// Seal now: the server erases every secret it holds in memory.
    #[command(after_help = "Example:\n  kms-cli operator seal")]
    Seal,
    /// Show whether the KMS is initialised and sealed, and unseal progress.
    #[command(after_help = "Example:\n  kms-cli operator status --format json")]
    Status,
    /// Replace the shares (new n and t). Prompts for t current shares.
    #[command(after_help = "Example:\n  kms-cli operator rekey --shares 3 --threshold 2")]
    Rekey {
        /// New number of shares.
        #[arg(long, value_name = "N")]
        shares: u32,
        /// New threshold.
        #[arg(long, value_name = "T")]
        threshold: u32,
        /// A current share, instead of the prompt (repeat t times).
        #[arg(long = "current-share", value_name = "SHARE")]
        current: Vec<String>,
    },
    /// Add a new barrier-key term; records under older terms stay readable.
    #[command(after_help = "Example:\n  kms-cli operator rotate-barrier")]
    RotateBarrier,
    /// Write a backup of the whole store to a file: a consistent snapshot, taken while the
    /// server keeps serving, every record still sealed under the barrier.
    #[command(
        after_help = "Example:\n  kms-cli operator backup --out kms-$(date +%F).backup\n\n\
        Needs the `backup` grant and the KMS unsealed. The file appears only once it is whole \
        and its checksum verified. Restore it offline with \
        `kms-server restore --config CONFIG --from FILE` into an empty storage folder; the \
        restored KMS unseals with the shares of this one. Format: docs/backup-format.md."
    )]
    Backup {
        /// The backup file to write (replaced if it exists, mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a backup file offline (no connection): format, every record, checksum, end.
    #[command(after_help = "Example:\n  kms-cli operator verify-backup kms-2026-12-01.backup")]
    VerifyBackup {
        /// The backup file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs one operator command: shares and officer keys are checked before connecting.
pub(crate) async fn run(op: Operator, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match op {
        Operator::Backup { out } => return backup(conn, &out, fmt).await,
        Operator::VerifyBackup { file } => return verify_backup(&file, fmt),
        _ => {}
    }
    // Check local input before connecting, so a typo costs no round trip.
    let expected = match &op {
        Operator::Unseal {
            expect_installation: Some(fp),
            reset: false,
            ..
        } => Some(check_fingerprint_text(fp)?),
        _ => None,
    };
    let local_share = match &op {
        Operator::Unseal {
            share,
            share_file,
            identity,
            reset: false,
            ..
        } => Some(read_share(
            share.as_deref(),
            share_file.as_ref(),
            identity.as_ref(),
        )?),
        _ => None,
    };
    let recipients = match &op {
        Operator::Init {
            shares,
            officer_key,
            ..
        } => officer_recipients(officer_key, *shares)?,
        _ => None,
    };
    let client = crate::connect(conn).await?;
    match op {
        Operator::Status => print_status(fmt, &client.status().await?),
        Operator::Init {
            shares,
            threshold,
            officer_key: _,
            out_dir,
        } => {
            let resp = client.init(shares, threshold).await?;
            let shares_text: Vec<Zeroizing<String>> =
                resp.shares.into_iter().map(Zeroizing::new).collect();
            output_shares(
                fmt,
                &shares_text,
                resp.threshold,
                &resp.share_set_id,
                &resp.installation_fingerprint,
                recipients,
                &out_dir,
                "initialised",
            )?;
        }
        Operator::Unseal { reset: true, .. } => print_status(fmt, &client.unseal_reset().await?),
        Operator::Unseal { .. } => {
            let share = local_share.ok_or_else(|| Failure::usage("no share given"))?;
            if let Some(expected) = expected {
                check_installation(&client.status().await?, &expected)?;
            }
            print_status(fmt, &client.unseal(&share).await?);
        }
        Operator::Seal => print_status(fmt, &client.seal().await?),
        Operator::Rekey {
            shares,
            threshold,
            current,
        } => {
            let mut current: Vec<Zeroizing<String>> =
                current.into_iter().map(Zeroizing::new).collect();
            for s in &current {
                check_share_text(s)?;
            }
            if current.is_empty() {
                let t = client.status().await?.threshold;
                for i in 1..=t {
                    current.push(prompt_share(&format!("current share {i} of {t}: "))?);
                }
            }
            let resp = client
                .rekey(
                    current.iter().map(|s| s.to_string()).collect(),
                    shares,
                    threshold,
                )
                .await?;
            let shares_text: Vec<Zeroizing<String>> =
                resp.shares.into_iter().map(Zeroizing::new).collect();
            output_shares(
                fmt,
                &shares_text,
                resp.threshold,
                &resp.share_set_id,
                &resp.installation_fingerprint,
                None,
                &PathBuf::from("."),
                "rekeyed",
            )?;
        }
        Operator::Backup { .. } | Operator::VerifyBackup { .. } => {
            unreachable!("handled before connecting")
        }
        Operator::RotateBarrier => {
            let r = client.rotate_barrier().await?;
            match fmt {
                Format::Json => println!("{}", json!({"term": r.term, "terms": r.terms})),
                Format::Human => println!(
                    "barrier key rotated: active term {} ({} terms)",
                    r.term, r.terms
                ),
            }
        }
    }
    Ok(())
}

/// `operator backup`: streams the backup into a temporary file beside `out` (0600), reads it
/// back and verifies it whole (format, record count, checksum), then syncs and renames it to
/// `out`. On any failure the temporary file is removed and `out` is left as it was.
///
/// Exit codes: 1 if the server refused or sent a backup that does not verify, 2 if `out`
/// cannot be written, 3 if it cannot connect.
async fn backup(conn: &Conn, out: &Path, fmt: Format) -> Result<(), Failure> {
    // Before connecting: an unwritable folder costs no backup.
    let mut tmp = TempOutput::beside(out)?;
    let client = crate::connect(conn).await?;
    let started = Instant::now();
    let mut stream = client.backup().await?;
    let bar = progress();
    let write_err =
        |e: std::io::Error| Failure::usage(format!("cannot write {}: {e}", out.display()));
    let (mut total, mut bytes) = (None, 0u64);
    let streamed = async {
        while let Some(chunk) = client.next_backup_chunk(&mut stream).await? {
            if total.is_none() {
                bar.set_length(chunk.records_total);
            }
            total = Some(chunk.records_total);
            tmp.file().write_all(&chunk.data).map_err(write_err)?;
            bytes += chunk.data.len() as u64;
            bar.set_position(chunk.records_sent);
        }
        Ok::<(), Failure>(())
    }
    .await;
    bar.finish_and_clear();
    streamed?;
    // Read back what reached the file, not what went through memory.
    let file = tmp.file();
    file.flush().map_err(write_err)?;
    file.seek(SeekFrom::Start(0)).map_err(write_err)?;
    let (header, sum) =
        kms_core::backup::verify(BufReader::new(&mut *file), |_| {}).map_err(|e| {
            Failure::server(format!(
                "the backup received does not verify: {e}; {} was not written",
                out.display()
            ))
        })?;
    if total.is_some_and(|t| t != header.records) {
        return Err(Failure::server(format!(
            "the server announced {} records but the file holds {}; {} was not written",
            total.unwrap_or_default(),
            header.records,
            out.display()
        )));
    }
    tmp.commit()?;
    backup_report(
        fmt,
        "backup written",
        out,
        &header,
        &sum,
        Some((bytes, started)),
    )
}

/// `operator verify-backup`: reads the whole file; exit 2 if it is not a whole, intact backup.
fn verify_backup(file: &Path, fmt: Format) -> Result<(), Failure> {
    let f = std::fs::File::open(file)
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", file.display())))?;
    let bar = progress();
    let mut reader = kms_core::backup::Reader::open(BufReader::new(f))
        .map_err(|e| Failure::usage(format!("{} is not a usable backup: {e}", file.display())))?;
    bar.set_length(reader.header().records);
    let checked = (|| {
        let mut n = 0;
        while reader.next_record()?.is_some() {
            n += 1;
            bar.set_position(n);
        }
        let header = reader.header().clone();
        Ok::<_, kms_core::backup::BackupError>((header, reader.finish()?))
    })();
    bar.finish_and_clear();
    let (header, sum) = checked
        .map_err(|e| Failure::usage(format!("{} is not a usable backup: {e}", file.display())))?;
    backup_report(fmt, "backup verified", file, &header, &sum, None)
}

/// A record-count progress bar on stderr, only when it is a terminal.
fn progress() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0).with_message("backup");
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} records eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn backup_report(
    fmt: Format,
    what: &str,
    file: &Path,
    header: &kms_core::backup::Header,
    sum: &[u8],
    transfer: Option<(u64, Instant)>,
) -> Result<(), Failure> {
    let created = output::iso8601(i64::try_from(header.created_unix).unwrap_or(i64::MAX));
    match fmt {
        Format::Json => output::json(&json!({
            "file": file.display().to_string(),
            "records": header.records,
            "created": created,
            "server_version": header.server_version,
            "sha256": hex::encode(sum),
            "bytes": transfer.map(|(b, _)| b),
        })),
        Format::Human => {
            let mut text = format!(
                "{what}: {} ({} records, taken {created} by kms-server {}, sha256 {})",
                file.display(),
                header.records,
                header.server_version,
                hex::encode(sum)
            );
            if let Some((b, started)) = transfer {
                text.push_str(&format!(
                    "\n{b} bytes in {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
            }
            output::print(&format!("{text}\n"))
        }
    }
}

fn officer_recipients(
    keys: &[String],
    n: u32,
) -> Result<Option<Vec<age::x25519::Recipient>>, Failure> {
    if keys.is_empty() {
        return Ok(None);
    }
    if keys.len() != n as usize {
        return Err(Failure::usage(format!(
            "--officer-key given {} times but --shares is {n}: give one key per share",
            keys.len()
        )));
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            k.parse::<age::x25519::Recipient>().map_err(|e| {
                Failure::usage(format!(
                    "--officer-key #{} is not an age X25519 recipient (age1…): {e}",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// What to do with the fingerprint printed by init and rekey.
fn pin_advice(what: &str, fingerprint: &str) -> String {
    let change = if what == "rekeyed" {
        "The fingerprint changed with the share set: replace the old value in \
         [seal] installation on every node before it next starts (a node pinned to the old one \
         refuses to unseal). "
    } else {
        ""
    };
    format!(
        "installation: {fingerprint}\n{change}Pin it: put `installation = \"{fingerprint}\"` \
         in the [seal] section of every server's config file, and give it to the officers \
         (`kms-cli operator unseal --expect-installation {fingerprint}`)."
    )
}

#[allow(clippy::too_many_arguments)]
fn output_shares(
    fmt: Format,
    shares: &[Zeroizing<String>],
    threshold: u32,
    set_id: &str,
    fingerprint: &str,
    recipients: Option<Vec<age::x25519::Recipient>>,
    out_dir: &std::path::Path,
    what: &str,
) -> Result<(), Failure> {
    if let Some(recipients) = recipients {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", out_dir.display())))?;
        let mut files = Vec::new();
        for (i, (share, r)) in shares.iter().zip(&recipients).enumerate() {
            let ct = age::encrypt(r, share.as_bytes())
                .map_err(|e| Failure::usage(format!("cannot encrypt share {}: {e}", i + 1)))?;
            let path = out_dir.join(format!("share-{}.age", i + 1));
            std::fs::write(&path, ct)
                .map_err(|e| Failure::usage(format!("cannot write {}: {e} (the shares are lost: the KMS must be re-initialised from an empty data directory)", path.display())))?;
            files.push(path.display().to_string());
        }
        match fmt {
            Format::Json => println!(
                "{}",
                json!({
                    "share_files": files,
                    "threshold": threshold,
                    "share_set_id": set_id,
                    "installation_fingerprint": fingerprint,
                    "pin": pin_advice(what, fingerprint),
                })
            ),
            Format::Human => {
                println!(
                    "kms {what}: share set {set_id}, {threshold} of {} shares needed to unseal",
                    shares.len()
                );
                for f in files {
                    println!("  {f}");
                }
                println!(
                    "Give each officer their file; they unseal with --share-file FILE --identity KEY."
                );
                println!("{}", pin_advice(what, fingerprint));
            }
        }
        return Ok(());
    }
    match fmt {
        Format::Json => {
            let list: Vec<&str> = shares.iter().map(|s| s.as_str()).collect();
            println!(
                "{}",
                json!({
                    "shares": list,
                    "threshold": threshold,
                    "share_set_id": set_id,
                    "installation_fingerprint": fingerprint,
                    "pin": pin_advice(what, fingerprint),
                })
            );
        }
        Format::Human => {
            println!(
                "kms {what}: share set {set_id}, {threshold} of {} shares needed to unseal.",
                shares.len()
            );
            println!("Give one share to each officer. They are shown once and stored nowhere.");
            for (i, s) in shares.iter().enumerate() {
                println!("share {}: {}", i + 1, s.as_str());
            }
            println!("{}", pin_advice(what, fingerprint));
        }
    }
    Ok(())
}

fn print_status(fmt: Format, s: &StatusResponse) {
    match fmt {
        Format::Json => println!(
            "{}",
            json!({
                "initialized": s.initialized,
                "sealed": s.sealed,
                "threshold": s.threshold,
                "shares": s.shares,
                "progress": s.progress,
                "submitted_indexes": s.submitted_indexes,
                "share_set_id": s.share_set_id,
                "barrier_term": s.barrier_term,
                "barrier_terms": s.barrier_terms,
                "version": s.version,
                "storage": s.storage,
                "installation_fingerprint": s.installation_fingerprint,
            })
        ),
        Format::Human => {
            if !s.initialized {
                println!("not initialised: run `kms-cli operator init --shares N --threshold T`");
                return;
            }
            println!("sealed:    {}", s.sealed);
            println!("threshold: {} of {} shares", s.threshold, s.shares);
            if s.sealed {
                println!(
                    "progress:  {} of {} (submitted: {:?})",
                    s.progress, s.threshold, s.submitted_indexes
                );
            } else {
                println!(
                    "barrier:   term {} ({} terms)",
                    s.barrier_term, s.barrier_terms
                );
            }
            println!("share set: {}", s.share_set_id);
            println!("installation: {}", s.installation_fingerprint);
            println!("server:    {} ({})", s.version, s.storage);
        }
    }
}

/// Checks an expected installation fingerprint locally (`sha256:` and 64 hex digits);
/// returns it in lower case, as the server prints it.
fn check_fingerprint_text(text: &str) -> Result<String, Failure> {
    let t = text.trim();
    let ok = t
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(Failure::usage(format!(
            "--expect-installation {t:?} is not an installation fingerprint: expected \
             \"sha256:\" followed by 64 hex digits, as `kms-cli operator init` printed it; \
             nothing was sent"
        )));
    }
    Ok(format!("sha256:{}", t[7..].to_ascii_lowercase()))
}

/// Refuses (exit 1) unless the server reports the expected installation: called before a share
/// is sent, so an officer never hands one to another installation than theirs.
fn check_installation(status: &StatusResponse, expected: &str) -> Result<(), Failure> {
    if !status.initialized {
        return Err(Failure::server(format!(
            "the server is not initialised, so it is not installation {expected}: the share was \
             not sent. Its data directory or database may have been swapped or lost"
        )));
    }
    if status.installation_fingerprint != expected {
        return Err(Failure::server(format!(
            "the server holds installation {} but you expect {expected}: the share was not \
             sent. Either this is not your KMS (a swapped data directory or database, or the \
             wrong address), or it was rekeyed since (ask for the new fingerprint)",
            if status.installation_fingerprint.is_empty() {
                "(none reported)"
            } else {
                status.installation_fingerprint.as_str()
            }
        )));
    }
    Ok(())
}

/// Parses a share locally: a typo is caught by its checksum before anything is sent.
fn check_share_text(text: &str) -> Result<(), Failure> {
    text.trim()
        .parse::<kms_core::shares::Share>()
        .map(|_| ())
        .map_err(|e| Failure::usage(format!("{e}; nothing was sent")))
}

fn read_share(
    arg: Option<&str>,
    file: Option<&PathBuf>,
    identity: Option<&PathBuf>,
) -> Result<Zeroizing<String>, Failure> {
    let text = match (arg, file) {
        (Some(s), _) => Zeroizing::new(s.trim().to_string()),
        (None, Some(path)) => {
            let bytes = Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
            );
            let plain = match identity {
                Some(id) => decrypt_share(&bytes, id)?,
                None => bytes,
            };
            Zeroizing::new(String::from_utf8_lossy(&plain).trim().to_string())
        }
        (None, None) => prompt_share("unseal share (input hidden): ")?,
    };
    check_share_text(&text)?;
    Ok(text)
}

fn decrypt_share(ct: &[u8], identity: &PathBuf) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let id_text = Zeroizing::new(std::fs::read_to_string(identity).map_err(|e| {
        Failure::usage(format!("cannot read identity {}: {e}", identity.display()))
    })?);
    let id = id_text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| {
            Failure::usage(format!(
                "{} holds no AGE-SECRET-KEY line",
                identity.display()
            ))
        })?
        .parse::<age::x25519::Identity>()
        .map_err(|e| Failure::usage(format!("bad age identity in {}: {e}", identity.display())))?;
    age::decrypt(&id, ct).map(Zeroizing::new).map_err(|e| {
        Failure::usage(format!(
            "cannot decrypt the share file with this identity: {e}"
        ))
    })
}

fn prompt_share(prompt: &str) -> Result<Zeroizing<String>, Failure> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::usage(format!("cannot read the share: {e}")))?
    } else {
        // Scripts pipe the share in; still never echo it.
        let _ = std::io::stderr().write_all(prompt.as_bytes());
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("cannot read the share: {e}")))?;
        line
    };
    let text = Zeroizing::new(text.trim().to_string());
    if text.is_empty() {
        return Err(Failure::usage("no share entered"));
    }
    check_share_text(&text)?;
    Ok(text)
}
