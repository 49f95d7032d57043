//! `kms-cli envelope encrypt | decrypt`: files of any size under a fresh data key.
//!
//! Encrypt asks the KMS for a data key (in clear and wrapped under `--key`), encrypts the file
//! locally in chunks (`kms_client::envelope`) and keeps only the wrapped key, in the output's
//! header. Decrypt has the KMS unwrap that key and decrypts locally. The file never goes to the
//! server; the data key in clear lives only in memory and is zeroized after use.
//!
//! The output is written to a temporary file in the output's folder and renamed over `--out`
//! only when the whole file is done (and, for decrypt, authenticated): on any failure there is
//! no output file, and no partial plaintext.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Seek};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use kms_client::EnvelopeFileError;
use kms_client::envelope::{EnvelopeError, Header};
use serde_json::json;

use crate::args::{KeyValue, pairs_to_map};
use crate::crypto::ContextArgs;
use crate::output::{self, Format, TempOutput};
use crate::{Conn, Failure};

#[derive(Subcommand)]
pub(crate) enum Envelope {
    /// Encrypt a file of any size under a fresh data key wrapped by a KMS key.
    #[command(after_help = "Examples:\n  \
        kms-cli envelope encrypt --key backups --in db.dump --out db.dump.kms\n  \
        kms-cli envelope encrypt --key backups --context host=db1 --in db.dump --out db.dump.kms\n\n\
        The file is encrypted locally (AES-256-GCM in 64 KiB chunks); only a 32-byte data key \
        is wrapped by the KMS. Decrypt with `kms-cli envelope decrypt` and the same --context.")]
    Encrypt {
        /// The key that wraps the file's data key.
        #[arg(long, value_name = "NAME")]
        key: String,
        #[command(flatten)]
        context: ContextArgs,
        #[command(flatten)]
        files: Files,
    },
    /// Decrypt a file written by `envelope encrypt`; the output appears only if every byte
    /// authenticates.
    #[command(after_help = "Example:\n  \
        kms-cli envelope decrypt --context host=db1 --in db.dump.kms --out db.dump\n\n\
        The file names its key; give the --context pairs it was encrypted with.")]
    Decrypt {
        #[command(flatten)]
        context: ContextArgs,
        #[command(flatten)]
        files: Files,
    },
}

/// `--in FILE --out FILE`.
#[derive(clap::Args)]
pub(crate) struct Files {
    /// The file to read.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The file to write (replaced if it exists, mode 0600); created only on success.
    #[arg(long = "out", value_name = "FILE")]
    output: PathBuf,
}

/// Runs `envelope encrypt` or `decrypt`. The input is opened (and for decrypt its header
/// parsed) and the output's folder checked before connecting.
///
/// Exit codes: 1 if the server refused (no such key, not allowed, wrong context or a wrapped
/// key it cannot unwrap), 2 for local file problems (unreadable input, not an envelope file,
/// a file that does not authenticate, unwritable output), 3 if it cannot connect.
pub(crate) async fn run(cmd: Envelope, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Envelope::Encrypt {
            key,
            context,
            files,
        } => encrypt(key, &context.pairs, files, conn, fmt).await,
        Envelope::Decrypt { context, files } => decrypt(&context.pairs, files, conn, fmt).await,
    }
}

async fn encrypt(
    key: String,
    context: &[KeyValue],
    files: Files,
    conn: &Conn,
    fmt: Format,
) -> Result<(), Failure> {
    let context = pairs_to_map(context, "--context")?;
    // Check local input before connecting: nothing is sent if a file is wrong.
    let (_, size) = open_input(&files.input)?;
    check_output_folder(&files.output)?;
    let client = crate::connect(conn).await?;
    let (bar, started) = (progress(size, "encrypting"), Instant::now());
    let b = bar.clone();
    let result = client
        .envelope_encrypt_file(&key, context, &files.input, &files.output, move |n| {
            b.set_position(n)
        })
        .await;
    bar.finish_and_clear();
    let done = result.map_err(|e| envelope_failure(e, &files.input, "encrypt"))?;
    report(
        fmt,
        "encrypted",
        &files,
        done.bytes,
        started,
        &done.key,
        done.version,
    )
}

async fn decrypt(
    context: &[KeyValue],
    files: Files,
    conn: &Conn,
    fmt: Format,
) -> Result<(), Failure> {
    let context = pairs_to_map(context, "--context")?;
    let (mut input, size) = open_input(&files.input)?;
    let header = Header::read(&mut input).map_err(|e| file_failure(e, &files.input, "read"))?;
    // The plaintext is the file less the header and a 16-byte tag per chunk: an estimate for
    // the progress bar only (an altered file fails authentication anyway).
    let header_len = input.stream_position().unwrap_or(0);
    let body = size.saturating_sub(header_len);
    let sealed_chunk = u64::from(header.chunk_size) + 16;
    let estimate = body.saturating_sub(body.div_ceil(sealed_chunk) * 16);
    check_output_folder(&files.output)?;
    let client = crate::connect(conn).await?;
    let (bar, started) = (progress(estimate, "decrypting"), Instant::now());
    let b = bar.clone();
    let result = client
        .envelope_decrypt_file(context, &files.input, &files.output, move |n| {
            b.set_position(n)
        })
        .await;
    bar.finish_and_clear();
    let done = result.map_err(|e| envelope_failure(e, &files.input, "decrypt"))?;
    report(
        fmt,
        "decrypted",
        &files,
        done.bytes,
        started,
        &done.key,
        done.version,
    )
}

/// Maps a failed envelope operation: a refusal by the KMS exits 1 (3 if unreachable), a
/// problem with the local file exits 2.
fn envelope_failure(e: EnvelopeFileError, input: &Path, what: &str) -> Failure {
    match e {
        EnvelopeFileError::Kms(e) => crate::crypto::decrypt_failure(e),
        EnvelopeFileError::Envelope(e) => file_failure(e, input, what),
        EnvelopeFileError::File { path, source } => Failure::usage(format!(
            "cannot {what} {}: {}: {source}; check the files and the free space (no output was written)",
            input.display(),
            path.display()
        )),
    }
}

/// The output's folder must exist (checked before connecting).
fn check_output_folder(output: &Path) -> Result<(), Failure> {
    // Creating and dropping the temporary file proves the folder exists and is writable.
    TempOutput::beside(output).map(drop)
}

/// Opens the input for buffered reading; returns it and its size in bytes.
fn open_input(path: &Path) -> Result<(BufReader<File>, u64), Failure> {
    let file = File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?
        .len();
    Ok((BufReader::new(file), size))
}

/// An envelope error is about the local file: exit 2 with the format's own message.
fn file_failure(e: EnvelopeError, input: &Path, what: &str) -> Failure {
    let next = match e {
        EnvelopeError::Io(_) => "check the files and the free space",
        EnvelopeError::NotEnvelope | EnvelopeError::Version(_) => {
            "give a file written by `kms-cli envelope encrypt`"
        }
        _ => "restore the file from a copy",
    };
    Failure::usage(format!(
        "cannot {what} {}: {e}; {next} (no output was written)",
        input.display()
    ))
}

/// A byte-count progress bar on stderr, only if stderr is a terminal.
fn progress(total: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_message(what);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn report(
    fmt: Format,
    what: &str,
    files: &Files,
    bytes: u64,
    started: Instant,
    key: &str,
    version: u32,
) -> Result<(), Failure> {
    let secs = started.elapsed().as_secs_f64();
    match fmt {
        Format::Json => output::json(&json!({
            "in": files.input.display().to_string(),
            "out": files.output.display().to_string(),
            "bytes": bytes,
            "key": key,
            "version": version,
            "seconds": secs,
        })),
        Format::Human => {
            let rate = if secs > 0.0 {
                format!(", {:.1} MiB/s", bytes as f64 / secs / 1_048_576.0)
            } else {
                String::new()
            };
            output::print(&format!(
                "{what} {} → {}: {bytes} bytes in {secs:.1} s{rate} (key {key} version {version})\n",
                files.input.display(),
                files.output.display(),
            ))
        }
    }
}
