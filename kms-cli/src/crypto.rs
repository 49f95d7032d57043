//! `kms-cli encrypt | decrypt | reencrypt | datakey | random`: the Crypto API on small data.
//!
//! Ciphertexts travel as one line of standard base64 (RFC 4648, with padding), so they fit in
//! shell variables, environment files and JSON. Larger data goes through `kms-cli envelope`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Subcommand, ValueEnum};
use kms_client::{ClientError, proto};
use serde_json::json;
use zeroize::Zeroizing;

use crate::args::{KeyValue, Stream, pairs_to_map};
use crate::distribution;
use crate::output::{self, Format};
use crate::{Conn, Failure};

/// The server's default plaintext limit for Encrypt; above it the hint points to `envelope`.
const SERVER_PLAINTEXT_LIMIT: usize = 64 * 1024;

#[derive(Subcommand)]
pub(crate) enum Crypto {
    /// Encrypt up to 64 KiB under a key; prints the ciphertext as one line of base64.
    #[command(after_help = "Examples:\n  \
        echo -n 'card 4111…' | kms-cli encrypt --key payments > token.b64\n  \
        kms-cli encrypt --key payments --context tenant=acme --in secret.txt --out secret.b64\n\n\
        The same --context pairs must be given to decrypt. Files larger than 64 KiB: \
        `kms-cli envelope encrypt`.")]
    Encrypt {
        /// The key to encrypt under (its latest version is used).
        #[arg(long, value_name = "NAME")]
        key: String,
        #[command(flatten)]
        context: ContextArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Decrypt the base64 text `kms-cli encrypt` wrote; writes the raw plaintext bytes.
    #[command(after_help = "Examples:\n  \
        kms-cli decrypt < token.b64\n  \
        kms-cli decrypt --context tenant=acme --in secret.b64 --out secret.txt\n\n\
        The ciphertext names its key and version; give the --context pairs it was encrypted \
        with.")]
    Decrypt {
        #[command(flatten)]
        context: ContextArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Re-encrypt a ciphertext under its key's latest version or another key (the plaintext
    /// stays on the server).
    #[command(after_help = "Examples:\n  \
        kms-cli reencrypt --in token.b64 --out token.b64          # after `kms-cli key rotate`\n  \
        kms-cli reencrypt --context tenant=acme --to-key archive --to-context tenant=acme < token.b64")]
    Reencrypt {
        #[command(flatten)]
        context: ContextArgs,
        /// The key for the new ciphertext (default: the ciphertext's own key).
        #[arg(long, value_name = "NAME")]
        to_key: Option<String>,
        /// A context pair for the new ciphertext, repeat for several (default: same as --context).
        #[arg(long, value_name = "KEY=VALUE")]
        to_context: Vec<KeyValue>,
        /// Give the new ciphertext an empty context (instead of the same as --context).
        #[arg(long, conflicts_with = "to_context")]
        to_empty_context: bool,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Generate a fresh AES-256 data key: in clear and wrapped under a key (both base64).
    #[command(after_help = "Examples:\n  \
        kms-cli datakey --key payments --format json\n  \
        kms-cli datakey --key payments --without-plaintext     # only the wrapped key\n  \
        kms-cli datakey --key payments --recipient partner.pem --recipient-out partner.wrapped\n\n\
        Unwrap the ciphertext later with `kms-cli decrypt`. With --recipient, the data key is \
        also wrapped to a partner's public key (RSA ≥ 3072 bits, PEM or DER, or an age \
        recipient age1…), for them to open with their private key: see `kms-cli key export \
        --help` for how. --recipient-out never replaces an existing file unless --force; it is \
        created (mode 0600) before anything is sent, and removed again if the request fails.")]
    Datakey {
        /// The key that wraps the data key.
        #[arg(long, value_name = "NAME")]
        key: String,
        #[command(flatten)]
        context: ContextArgs,
        /// Return only the wrapped data key.
        #[arg(long)]
        without_plaintext: bool,
        /// Also wrap the data key to this public key: an RSA public key (PEM or DER, at least
        /// 3072 bits) or a file holding an age recipient (age1…).
        #[arg(long, value_name = "FILE")]
        recipient: Option<PathBuf>,
        /// Write the data key wrapped to --recipient here (binary, mode 0600). Required with
        /// --recipient unless --format json (which prints it as base64). An existing file is
        /// refused unless --force.
        #[arg(long, value_name = "FILE", requires = "recipient")]
        recipient_out: Option<PathBuf>,
        /// Replace the --recipient-out file if it exists.
        #[arg(long, requires = "recipient_out")]
        force: bool,
    },
    /// Random bytes from the server's generator.
    #[command(
        after_help = "Examples:\n  kms-cli random --bytes 32\n  kms-cli random --bytes 16 --encoding hex"
    )]
    Random {
        /// How many bytes, 1..=1024.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
        bytes: u32,
        /// How to print them.
        #[arg(long, value_enum, default_value = "base64")]
        encoding: Encoding,
    },
}

/// `--context KEY=VALUE`, repeatable.
#[derive(clap::Args)]
pub(crate) struct ContextArgs {
    /// Encryption context pair bound to the ciphertext; repeat for several. Decrypting needs
    /// the same pairs (in any order).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(crate) pairs: Vec<KeyValue>,
}

/// `--in` and `--out`, standard input and output by default.
#[derive(clap::Args)]
pub(crate) struct IoArgs {
    /// Read from this file; - for standard input.
    #[arg(long = "in", value_name = "FILE|-", default_value = "-")]
    input: Stream,
    /// Write to this file (replaced atomically, mode 0600); - for standard output.
    #[arg(long = "out", value_name = "FILE|-", default_value = "-")]
    output: Stream,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Encoding {
    Base64,
    Hex,
}

/// Runs one crypto command. Input is read and checked (context pairs, base64) before
/// connecting: bad local input exits 2 with nothing sent.
pub(crate) async fn run(cmd: Crypto, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Crypto::Encrypt { key, context, io } => {
            let context = pairs_to_map(&context.pairs, "--context")?;
            let mut plaintext = read_all(&io.input)?;
            let len = plaintext.len();
            let client = crate::connect(conn).await?;
            // Moved, not copied, into the request: one unwiped copy fewer.
            let resp = client
                .encrypt(&key, std::mem::take(&mut *plaintext), context)
                .await
                .map_err(|e| {
                    let f = Failure::from(e);
                    if f.is_refusal() && len > SERVER_PLAINTEXT_LIMIT {
                        f.hint(&format!(
                            " ({len} bytes of plaintext: for more than 64 KiB use `kms-cli envelope encrypt`)"
                        ))
                    } else {
                        f
                    }
                })?;
            let text = B64.encode(&resp.ciphertext);
            let out = match fmt {
                Format::Json => {
                    json!({"ciphertext": text, "key": resp.key, "version": resp.version})
                        .to_string()
                }
                Format::Human => text,
            };
            output::write_to(&io.output, format!("{out}\n").as_bytes())
        }
        Crypto::Decrypt { context, io } => {
            let context = pairs_to_map(&context.pairs, "--context")?;
            let ciphertext = read_base64(&io.input)?;
            let client = crate::connect(conn).await?;
            let mut resp = client
                .decrypt(ciphertext, context)
                .await
                .map_err(decrypt_failure)?;
            let plaintext = Zeroizing::new(std::mem::take(&mut resp.plaintext));
            match fmt {
                Format::Json => {
                    let b64 = Zeroizing::new(B64.encode(&*plaintext));
                    let line = Zeroizing::new(format!(
                        "{}\n",
                        json!({"plaintext_base64": *b64, "key": resp.key, "version": resp.version})
                    ));
                    output::write_to(&io.output, line.as_bytes())
                }
                Format::Human => output::write_to(&io.output, &plaintext),
            }
        }
        Crypto::Reencrypt {
            context,
            to_key,
            to_context,
            to_empty_context,
            io,
        } => {
            let context = pairs_to_map(&context.pairs, "--context")?;
            let destination_context = pairs_to_map(&to_context, "--to-context")?;
            let ciphertext = read_base64(&io.input)?;
            let client = crate::connect(conn).await?;
            let req = proto::ReEncryptRequest {
                ciphertext,
                context,
                destination_key: to_key.unwrap_or_default(),
                destination_context,
                replace_context: to_empty_context,
            };
            let resp = client
                .call(client.crypto().re_encrypt(req))
                .await
                .map_err(decrypt_failure)?;
            let text = B64.encode(&resp.ciphertext);
            let out = match fmt {
                Format::Json => json!({
                    "ciphertext": text,
                    "source_key": resp.source_key,
                    "source_version": resp.source_version,
                    "key": resp.key,
                    "version": resp.version,
                })
                .to_string(),
                Format::Human => text,
            };
            output::write_to(&io.output, format!("{out}\n").as_bytes())
        }
        Crypto::Datakey {
            key,
            context,
            without_plaintext,
            recipient,
            recipient_out,
            force,
        } => {
            let context = pairs_to_map(&context.pairs, "--context")?;
            if recipient.is_some() && recipient_out.is_none() && fmt == Format::Human {
                return Err(Failure::usage(
                    "--recipient needs --recipient-out FILE: the wrapped data key is binary (or use \
                     --format json to get it as base64); nothing was sent",
                ));
            }
            let recipient = recipient
                .as_deref()
                .map(distribution::read_recipient)
                .transpose()?
                .map(|r| proto::Recipient { recipient: Some(r) });
            let to_recipient = recipient.is_some();
            // Claimed before the request: a bad path must not mean a data key generated and
            // audited on the server but lost here.
            let recipient_file = recipient_out
                .as_deref()
                .map(|p| output::Reserved::claim(p, "--recipient-out", force))
                .transpose()?;
            let client = crate::connect(conn).await?;
            let req = proto::GenerateDataKeyRequest {
                key,
                context,
                without_plaintext,
                recipient,
            };
            let mut resp = client.call(client.crypto().generate_data_key(req)).await?;
            let plaintext = Zeroizing::new(std::mem::take(&mut resp.plaintext));
            if to_recipient && resp.recipient_wrapped.is_empty() {
                return Err(Failure::server(
                    "the server returned no data key wrapped to --recipient (does it predate \
                     recipients? upgrade it)",
                ));
            }
            let format = distribution::format_name(resp.recipient_format);
            if let Some(file) = recipient_file {
                file.commit(&resp.recipient_wrapped)?;
            }
            let plain_b64 = Zeroizing::new((!without_plaintext).then(|| B64.encode(&*plaintext)));
            let wrapped = B64.encode(&resp.ciphertext);
            let text = Zeroizing::new(match fmt {
                Format::Json => {
                    let mut v = json!({
                        "plaintext_base64": *plain_b64,
                        "ciphertext": wrapped,
                        "key": resp.key,
                        "version": resp.version,
                    });
                    if to_recipient {
                        v["recipient_wrapped_base64"] = B64.encode(&resp.recipient_wrapped).into();
                        v["recipient_format"] = format.into();
                    }
                    format!("{v}\n")
                }
                Format::Human => {
                    let mut t = format!("key:        {} (version {})\n", resp.key, resp.version);
                    if let Some(p) = plain_b64.as_deref() {
                        t.push_str(&format!("plaintext:  {p}\n"));
                    }
                    t.push_str(&format!("ciphertext: {wrapped}\n"));
                    if let Some(path) = &recipient_out {
                        t.push_str(&format!(
                            "recipient:  {} ({format}, {} bytes)\n",
                            path.display(),
                            resp.recipient_wrapped.len()
                        ));
                    }
                    t
                }
            });
            output::print(&text)
        }
        Crypto::Random { bytes, encoding } => {
            let client = crate::connect(conn).await?;
            let req = proto::GenerateRandomRequest { length: bytes };
            let mut resp = client.call(client.crypto().generate_random(req)).await?;
            let random = Zeroizing::new(std::mem::take(&mut resp.random));
            if random.len() != bytes as usize {
                return Err(Failure::server(format!(
                    "the server returned {} random bytes instead of {bytes}",
                    random.len()
                )));
            }
            let (text, name) = match encoding {
                Encoding::Base64 => (Zeroizing::new(B64.encode(&*random)), "base64"),
                Encoding::Hex => (Zeroizing::new(hex::encode(&*random)), "hex"),
            };
            let line = Zeroizing::new(match fmt {
                Format::Json => format!("{}\n", json!({"random": *text, "encoding": name})),
                Format::Human => format!("{}\n", *text),
            });
            output::print(&line)
        }
    }
}

/// A refused decryption. The server's message is opaque on purpose ("ciphertext authentication
/// failed"), so for an invalid argument the hint names the two usual causes.
pub(crate) fn decrypt_failure(e: ClientError) -> Failure {
    /// gRPC's INVALID_ARGUMENT.
    const INVALID_ARGUMENT: i32 = 3;
    let invalid = matches!(&e, ClientError::Status(s) if i32::from(s.code()) == INVALID_ARGUMENT);
    let f = Failure::from(e);
    if invalid {
        f.hint(" (check that the ciphertext is complete and the --context pairs are the ones it was encrypted with)")
    } else {
        f
    }
}

/// Reads all of `src`.
/// Reads all of `src` into a buffer that is wiped when dropped (it may hold plaintext).
fn read_all(src: &Stream) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut buf = Zeroizing::new(Vec::new());
    match src {
        Stream::Std => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("kms-cli: reading from standard input; end with Ctrl-D");
            }
            stdin
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
        }
        Stream::File(path) => {
            buf = Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
            );
        }
    }
    Ok(buf)
}

/// Reads `src` and decodes it as the base64 text `kms-cli encrypt` writes; whitespace
/// (the final newline, line wrapping) is ignored.
fn read_base64(src: &Stream) -> Result<Vec<u8>, Failure> {
    let name = match src {
        Stream::Std => "standard input".to_string(),
        Stream::File(p) => p.display().to_string(),
    };
    decode_base64(&read_all(src)?, &name)
}

fn decode_base64(raw: &[u8], name: &str) -> Result<Vec<u8>, Failure> {
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.is_empty() {
        return Err(Failure::usage(format!(
            "{name} is empty: expected a ciphertext as base64 text, as `kms-cli encrypt` writes; nothing was sent"
        )));
    }
    B64.decode(&text).map_err(|e| {
        Failure::usage(format!(
            "{name} is not base64 text ({e}): give the ciphertext exactly as `kms-cli encrypt` wrote it; nothing was sent"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_input_ignores_whitespace_and_names_the_problem() {
        assert_eq!(
            decode_base64(b" aGVs\nbG8=\n", "x").ok(),
            Some(b"hello".to_vec())
        );
        let err = decode_base64(b"not base64!", "standard input").expect_err("refused");
        assert_eq!(err.code, 2);
        assert!(err.message.contains("not base64"), "{}", err.message);
        let err = decode_base64(b" \n", "f").expect_err("refused");
        assert!(err.message.contains("f is empty"), "{}", err.message);
    }
}
