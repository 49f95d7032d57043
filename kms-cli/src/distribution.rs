//! `kms-cli key import-params | import | export`: key material in and out of the KMS, only
//! ever wrapped to a public key (bring your own key, export to a partner).
//!
//! Also the local side shared with `kms-cli datakey --recipient`: reading a recipient file
//! (RSA public key or age recipient) and writing wrapped, binary material. Every file named on
//! the command line is read and checked before connecting: bad local input exits 2 with
//! nothing sent.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{ArgGroup, Subcommand};
use kms_client::proto::{self, WrapFormat, recipient::Recipient};
use kms_core::wrap::{self, RsaRecipient};
use serde_json::json;
use zeroize::Zeroizing;

use crate::args::{KeyValue, Stream, pairs_to_map};
use crate::keys::{enum_name, key_detail, key_json};
use crate::output::{self, Format, time_or_dash};
use crate::{Conn, Failure};

/// AES-256 key material, the only kind the KMS imports.
const MATERIAL_LEN: usize = 32;

#[derive(Subcommand)]
pub(crate) enum Distribution {
    /// Start an import (bring your own key): a wrapping public key and a single-use token.
    ///
    /// The public key is a fresh RSA-3072 key; the token is for key NAME only (a new name, or
    /// an existing imported key).
    #[command(after_help = "Examples:\n  \
        kms-cli key import-params partners/acme --public-key-out wrapping.pem\n  \
        kms-cli key import-params partners/acme --format json\n  \
        kms-cli key import-params partners/acme --public-key-out wrapping.pem --force   # replace it\n\n\
        The token works once, for this NAME only, until it expires (24 hours by default). Wrap \
        32 bytes of key material to the public key (see `kms-cli key import --help` for the \
        openssl commands), then `kms-cli key import NAME --wrapped FILE --token TOKEN`. \
        `kms-cli key import NAME --material FILE` does all of this in one step.")]
    ImportParams {
        /// The key the material will go into: a new name, or an existing imported key.
        name: String,
        /// Write the wrapping public key (PEM) to this file instead of printing it. An existing
        /// file is refused unless --force.
        #[arg(long, value_name = "FILE")]
        public_key_out: Option<PathBuf>,
        /// Replace the --public-key-out file if it exists.
        #[arg(long, requires = "public_key_out")]
        force: bool,
    },
    /// Import AES-256 key material (bring your own key); prints the key like `key show`.
    ///
    /// Creates key NAME (origin external), adds a version to an imported key (it becomes the
    /// latest), or restores a destroyed version of an imported key with the very same
    /// material. Imported keys never rotate: import a new version instead.
    #[command(
        group(ArgGroup::new("source").required(true).args(["wrapped", "material"])),
        after_help = "Examples:\n  \
        kms-cli key import partners/acme --material material.bin --label team=billing\n  \
        kms-cli key import partners/acme --wrapped wrapped.bin --token TOKEN\n\n\
        With --material, kms-cli gets import parameters, wraps the 32 bytes locally and sends \
        only the wrapped form. To wrap elsewhere (e.g. on an offline machine) with openssl, \
        after `kms-cli key import-params NAME --public-key-out wrapping.pem`:\n  \
        umask 077   # the KEK and material files: readable by you only\n  \
        openssl rand 32 > kek.bin\n  \
        openssl enc -id-aes256-wrap-pad -K $(od -An -v -tx1 kek.bin | tr -d ' \\n') -iv A65959A6 \
        -in material.bin -out kwp.bin\n  \
        openssl pkeyutl -encrypt -pubin -inkey wrapping.pem -pkeyopt rsa_padding_mode:oaep \
        -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in kek.bin -out rsa.bin\n  \
        cat rsa.bin kwp.bin > wrapped.bin && shred -u kek.bin rsa.bin kwp.bin\n\
        wrapped.bin is raw binary (384 + 40 = 424 bytes for 32 bytes of material), not base64.\n\
        The token is consumed by the first import that gets as far as unwrapping, whatever the \
        outcome: after a refusal, start again from import-params. --description, --label and \
        --exportable apply only when the import creates the key."
    )]
    Import {
        /// The key named in `kms-cli key import-params`.
        name: String,
        /// Key material already wrapped (RSA-OAEP-SHA256 ‖ AES-KWP) to the public key of
        /// `kms-cli key import-params`, sent as is. Needs --token.
        // Not `requires = "token"`: clap would then show --token as always required in the
        // usage line; checked in `run` instead.
        #[arg(long, value_name = "FILE")]
        wrapped: Option<PathBuf>,
        /// The import token printed by `kms-cli key import-params` with that public key.
        #[arg(long, value_name = "TOKEN", requires = "wrapped")]
        token: Option<String>,
        /// A file of exactly 32 raw bytes of key material: wrapped here, never sent in clear.
        #[arg(long, value_name = "FILE")]
        material: Option<PathBuf>,
        /// Free text shown by `key show` (new keys only).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// A label KEY=VALUE; repeat for several (new keys only).
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<KeyValue>,
        /// Allow `kms-cli key export` for the new key. Irreversible: set at creation, never
        /// changed (new keys only).
        #[arg(long)]
        exportable: bool,
    },
    /// Export a version's key material, wrapped to a recipient's public key.
    ///
    /// Only for keys created or imported --exportable, and for enabled keys and versions.
    #[command(after_help = "Examples:\n  \
        kms-cli key export partners/acme --recipient partner.pem --out acme.wrapped\n  \
        kms-cli key export partners/acme --version 2 --recipient partner-age.txt --out acme.age\n  \
        kms-cli key export partners/acme --recipient partner.pem --format json\n\n\
        --recipient FILE holds an RSA public key of at least 3072 bits (PEM or DER, as \
        `openssl pkey -pubout` writes it) or an age recipient line (age1…, as `age-keygen -y` \
        prints it; `#` comment lines and blank lines are ignored, one recipient per export). \
        --out never replaces an existing file unless --force; it is created (mode 0600) before \
        anything is sent, and removed again if the export fails.\n\n\
        To an RSA key, the output is RSA-OAEP-SHA256(K) ‖ AES-KWP(K, material); the RSA part \
        is the modulus length (384 bytes for RSA-3072, 512 for RSA-4096). Open it with the \
        private key:\n  \
        umask 077\n  \
        head -c 384 acme.wrapped > rsa.bin && tail -c +385 acme.wrapped > kwp.bin\n  \
        openssl pkeyutl -decrypt -inkey partner-private.pem -pkeyopt rsa_padding_mode:oaep \
        -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in rsa.bin -out kek.bin\n  \
        openssl enc -d -id-aes256-wrap-pad -K $(od -An -v -tx1 kek.bin | tr -d ' \\n') -iv A65959A6 \
        -in kwp.bin -out material.bin && shred -u kek.bin rsa.bin kwp.bin\n\
        To an age recipient, the output is a binary age file:\n  \
        age -d -i partner-identity.txt -o material.bin acme.age")]
    Export {
        /// The key's name.
        name: String,
        /// The version to export. Default: the latest.
        #[arg(long, value_name = "V", value_parser = clap::value_parser!(u32).range(1..))]
        version: Option<u32>,
        /// The recipient: an RSA public key (PEM or DER, ≥ 3072 bits) or an age recipient
        /// (age1…).
        #[arg(long, value_name = "FILE")]
        recipient: PathBuf,
        /// Write the wrapped material (binary) here, mode 0600; - for standard output when it
        /// is not a terminal. Required unless --format json (which prints it as base64). An
        /// existing file is refused unless --force.
        #[arg(long, value_name = "FILE|-")]
        out: Option<Stream>,
        /// Replace the --out file if it exists.
        #[arg(long, requires = "out")]
        force: bool,
    },
}

/// Runs `key import-params`, `key import` or `key export`.
///
/// Exit codes: 1 if the server refused (not allowed, key not importable or not exportable, a
/// token or wrapped material it does not accept), 2 for local problems found before anything
/// was sent (unreadable files, material that is not 32 bytes, an unusable recipient, binary
/// output to a terminal) or an output file that cannot be written, 3 if it cannot connect.
pub(crate) async fn run(cmd: Distribution, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Distribution::ImportParams {
            name,
            public_key_out,
            force,
        } => {
            // Claimed before the request: a bad path must not cost an issued (and audited) token.
            let pem_out = public_key_out
                .as_deref()
                .map(|p| output::Reserved::claim(p, "--public-key-out", force))
                .transpose()?;
            let client = crate::connect(conn).await?;
            let params = client.import_params(&name).await?;
            let pem = if params.wrapping_public_key_pem.is_empty() {
                wrap::pem("PUBLIC KEY", &params.wrapping_public_key_der)
            } else {
                params.wrapping_public_key_pem.clone()
            };
            if let Some(out) = pem_out {
                out.commit(pem.as_bytes())?;
            }
            let expires = time_or_dash(params.expires_unix);
            let format = format_name(params.wrapping_format);
            match fmt {
                Format::Json => output::json(&json!({
                    "name": params.name,
                    "import_token": params.import_token,
                    "expires": expires,
                    "wrapping_public_key_pem": pem,
                    "wrapping_format": format,
                })),
                Format::Human => {
                    let mut text = format!(
                        "import token:   {}\nexpires:        {expires}\nwrapping:       {format}\n",
                        params.import_token
                    );
                    match &public_key_out {
                        Some(path) => {
                            text.push_str(&format!("public key:     {}\n", path.display()));
                        }
                        None => {
                            text.push('\n');
                            text.push_str(&pem);
                        }
                    }
                    text.push_str(&format!(
                        "\nWrap 32 bytes of key material to this public key (`kms-cli key import --help`), then:\n  \
                         kms-cli key import {} --wrapped FILE --token {}\n",
                        params.name, params.import_token
                    ));
                    output::print(&text)
                }
            }
        }
        Distribution::Import {
            name,
            wrapped,
            token,
            material,
            description,
            label,
            exportable,
        } => {
            let labels = pairs_to_map(&label, "--label")?;
            // clap allows exactly one of --wrapped and --material, and --token only with
            // --wrapped.
            let source = match (wrapped, token, material) {
                (Some(path), Some(token), None) => Source::Wrapped {
                    blob: read_wrapped(&path)?,
                    token,
                },
                (Some(_), None, _) => {
                    return Err(Failure::usage(
                        "--wrapped needs --token TOKEN: the import token `kms-cli key \
                         import-params NAME` printed with the public key the material was wrapped \
                         to; nothing was sent",
                    ));
                }
                (None, None, Some(path)) => Source::Material(read_material(&path)?),
                _ => {
                    return Err(Failure::usage(
                        "give either --wrapped FILE with --token TOKEN, or --material FILE; \
                         nothing was sent",
                    ));
                }
            };
            let client = crate::connect(conn).await?;
            let (import_token, wrapped_material) = match source {
                Source::Wrapped { blob, token } => (token, blob),
                Source::Material(material) => {
                    let params = client.import_params(&name).await?;
                    if params.wrapping_format != WrapFormat::RsaOaepSha256AesKwp as i32 {
                        return Err(Failure::server(format!(
                            "the server asks for wrapping format {}, which this kms-cli cannot \
                             produce: wrap with --wrapped instead, or upgrade kms-cli",
                            format_name(params.wrapping_format)
                        )));
                    }
                    let blob = RsaRecipient::from_der(&params.wrapping_public_key_der)
                        .and_then(|r| r.wrap(&material))
                        .map_err(|e| {
                            Failure::server(format!(
                                "cannot wrap to the server's wrapping public key: {e}"
                            ))
                        })?;
                    // The clear material is no longer needed: wiped now, before the round trip.
                    drop(material);
                    (params.import_token, blob)
                }
            };
            let req = proto::ImportKeyMaterialRequest {
                name,
                import_token,
                wrapped_material,
                description: description.unwrap_or_default(),
                labels,
                exportable,
            };
            let key = client.import_key_material(req).await?;
            match fmt {
                Format::Json => output::json(&key_json(&key)),
                Format::Human => output::print(&key_detail(&key)),
            }
        }
        Distribution::Export {
            name,
            version,
            recipient,
            out,
            force,
        } => {
            let out = match (out, fmt) {
                (Some(out), _) => Some(out),
                (None, Format::Json) => None,
                (None, Format::Human) => {
                    return Err(Failure::usage(
                        "--out FILE is required: the wrapped material is binary (or use \
                         --format json to get it as base64); nothing was sent",
                    ));
                }
            };
            if let Some(out) = &out {
                refuse_terminal(out, "--out")?;
            }
            let recipient = read_recipient(&recipient)?;
            // Claimed before the request, so that a bad path never means "exported and audited
            // on the server, failed here".
            let file_out = match &out {
                Some(Stream::File(path)) => Some(output::Reserved::claim(path, "--out", force)?),
                _ => None,
            };
            let client = crate::connect(conn).await?;
            let resp = client
                .export_key(&name, version.unwrap_or(0), recipient)
                .await?;
            if resp.wrapped_material.is_empty() {
                return Err(Failure::server(format!(
                    "the server returned no wrapped material for key {name}"
                )));
            }
            let format = format_name(resp.format);
            match file_out {
                Some(file) => file.commit(&resp.wrapped_material)?,
                None if out == Some(Stream::Std) => output::stdout(&resp.wrapped_material)?,
                None => {}
            }
            match (fmt, &out) {
                (Format::Json, _) => output::json(&json!({
                    "name": resp.name,
                    "version": resp.version,
                    "format": format,
                    "wrapped_material_base64": B64.encode(&resp.wrapped_material),
                })),
                // The material went to standard output: say nothing there.
                (Format::Human, Some(Stream::Std) | None) => Ok(()),
                (Format::Human, Some(Stream::File(path))) => output::print(&format!(
                    "key {} version {} exported to {} ({format}, {} bytes); open it with the \
                     recipient's private key (`kms-cli key export --help`)\n",
                    resp.name,
                    resp.version,
                    path.display(),
                    resp.wrapped_material.len()
                )),
            }
        }
    }
}

/// Where `key import` takes its material from. The clear material is wiped when dropped.
enum Source {
    Wrapped { blob: Vec<u8>, token: String },
    Material(Zeroizing<Vec<u8>>),
}

/// `rsa-oaep-sha256-aes-kwp` or `age`; an unknown number stays visible.
pub(crate) fn format_name(raw: i32) -> String {
    let name = WrapFormat::try_from(raw).ok().map(|f| f.as_str_name());
    enum_name(name, "WRAP_FORMAT_", raw)
}

/// Refuses to write binary output to a terminal (it would garble it and show nothing useful).
pub(crate) fn refuse_terminal(dest: &Stream, flag: &str) -> Result<(), Failure> {
    if *dest == Stream::Std && std::io::stdout().is_terminal() {
        return Err(Failure::usage(format!(
            "{flag} - would write binary to the terminal: give a file, or redirect standard \
             output; nothing was sent"
        )));
    }
    Ok(())
}

/// Reads a `--recipient` file: see [`parse_recipient`].
pub(crate) fn read_recipient(path: &Path) -> Result<Recipient, Failure> {
    let bytes = std::fs::read(path).map_err(|e| {
        let given = path.to_string_lossy();
        // The usual slip: the recipient itself where its file belongs.
        if e.kind() == std::io::ErrorKind::NotFound && given.trim().starts_with("age1") {
            return Failure::usage(
                "--recipient takes a FILE holding the recipient, not the recipient itself: \
                 echo age1… > partner.txt, then --recipient partner.txt; nothing was sent",
            );
        }
        Failure::usage(format!(
            "cannot read recipient {}: {e}; nothing was sent",
            path.display()
        ))
    })?;
    parse_recipient(&bytes, &path.display().to_string())
}

/// A recipient file's content: an age recipients file (`age1…` lines; `#` comments and blank
/// lines ignored; exactly one recipient) or an RSA public key, PEM or DER, sent as given. Both
/// are checked here with the KMS's own parsers, so a wrong file is refused before anything is
/// sent.
///
/// Returns: the recipient, or a usage failure (exit 2) saying what is wrong and what to give
/// instead, with a special word for the usual wrong files (private keys, certificates).
pub(crate) fn parse_recipient(bytes: &[u8], name: &str) -> Result<Recipient, Failure> {
    let bad = |why: &str| Failure::usage(format!("recipient {name}: {why}; nothing was sent"));
    if bytes.trim_ascii().is_empty() {
        return Err(bad(
            "the file is empty: put an RSA public key in it (PEM or DER, from `openssl pkey \
             -pubout`) or one age recipient line (age1…, from `age-keygen -y`)",
        ));
    }
    // DER never is UTF-8 (it starts 0x30 0x82), so text here means PEM, age or a wrong file.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let t = text.trim();
        // A private key in the wrong place must not travel anywhere: say which file to use.
        if t.starts_with("AGE-SECRET-KEY-") || t.contains("\nAGE-SECRET-KEY-") {
            return Err(bad(
                "this is an age identity (a private key): give its recipient, from `age-keygen -y FILE`",
            ));
        }
        if t.contains("PRIVATE KEY-----") {
            return Err(bad(
                "this is a private key: give the public key, from `openssl pkey -in FILE -pubout`",
            ));
        }
        if t.contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad(
                "this is an X.509 certificate, not a public key: extract its key with `openssl \
                 x509 -in cert.pem -pubkey -noout > partner.pub.pem` and give that file",
            ));
        }
        if t.contains("-----BEGIN RSA PUBLIC KEY-----") {
            return Err(bad(
                "this is an RSA public key in PKCS#1 form: convert it with `openssl rsa \
                 -RSAPublicKey_in -in FILE -pubout -out partner.pub.pem` and give that file",
            ));
        }
        if !t.starts_with("-----BEGIN") {
            return age_recipient(t).map_err(|why| bad(&why));
        }
    }
    RsaRecipient::parse(bytes).map_err(|e| bad(&e.to_string()))?;
    Ok(Recipient::RsaPublicKey(bytes.to_vec()))
}

/// The one recipient of an age recipients file, as `age-keygen -y` writes it or a person
/// edits it: `#` comment lines and blank lines are skipped.
fn age_recipient(text: &str) -> Result<Recipient, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [] => Err("the file holds only comments: add one age recipient line (age1…)".into()),
        [one] if one.starts_with("age1") => {
            wrap::Recipient::age(one).map_err(|e| e.to_string())?;
            Ok(Recipient::AgeRecipient((*one).to_string()))
        }
        [_] => Err(
            "this is neither an RSA public key (PEM, -----BEGIN PUBLIC KEY-----, from `openssl \
             pkey -pubout`) nor an age recipient (age1…, from `age-keygen -y`)"
                .into(),
        ),
        many => Err(format!(
            "the file holds {} recipient lines: one recipient per export; put one in a file of \
             its own (run the command once per recipient)",
            many.len()
        )),
    }
}

/// Reads a `--wrapped` file, sent as is (the server checks its shape). Text (base64, hex,
/// PEM) is refused here: the wrap is raw binary, and a text file would only use up the token.
fn read_wrapped(path: &Path) -> Result<Vec<u8>, Failure> {
    let blob = std::fs::read(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {e}; nothing was sent",
            path.display()
        ))
    })?;
    check_wrapped(&blob, &path.display().to_string())?;
    Ok(blob)
}

/// A `--wrapped` blob must be non-empty binary. Random binary of hundreds of bytes is never all
/// printable, so printable text means an encoding was left on.
fn check_wrapped(blob: &[u8], name: &str) -> Result<(), Failure> {
    let expect = "--wrapped takes the raw binary wrap (RSA part ‖ AES-KWP part: 384 + 40 = 424 \
                  bytes for RSA-3072 and 32 bytes of material)";
    if blob.is_empty() {
        return Err(Failure::usage(format!(
            "{name} is empty: {expect}; nothing was sent"
        )));
    }
    if !blob
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Ok(());
    }
    let compact: Vec<u8> = blob
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let what = if compact.starts_with(b"-----BEGIN") {
        "is PEM text: remove the -----BEGIN/END----- lines and decode the rest with `base64 -d`"
            .to_string()
    } else if compact.len().is_multiple_of(2) && compact.iter().all(u8::is_ascii_hexdigit) {
        format!("is hex text: decode it with `xxd -r -p {name} > wrapped.bin`")
    } else if B64.decode(&compact).is_ok() {
        format!("is base64 text: decode it with `base64 -d {name} > wrapped.bin`")
    } else {
        "is text".to_string()
    };
    Err(Failure::usage(format!(
        "{name} {what}; {expect}; nothing was sent"
    )))
}

/// Reads a `--material` file into a buffer wiped on drop: see [`check_material`].
fn read_material(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let material = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {e}; nothing was sent",
            path.display()
        ))
    })?);
    check_material(&material, &path.display().to_string())?;
    Ok(material)
}

/// Key material must be exactly 32 raw bytes; hex or base64 text of them is named as such,
/// since that is the usual mistake. The message never quotes the content.
fn check_material(material: &[u8], name: &str) -> Result<(), Failure> {
    if material.len() == MATERIAL_LEN {
        return Ok(());
    }
    let text = material.trim_ascii();
    let hint = if material.len() == MATERIAL_LEN + 1 && material.ends_with(b"\n") {
        " and ends with a newline: write the raw 32 bytes (e.g. `head -c 32`)"
    } else if text.len() == 2 * MATERIAL_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        " (it looks like hex text: convert it with `xxd -r -p`)"
    } else if text.len() == 44 && B64.decode(text).is_ok_and(|b| b.len() == MATERIAL_LEN) {
        " (it looks like base64 text: convert it with `base64 -d`)"
    } else {
        ""
    };
    Err(Failure::usage(format!(
        "{name} is {} bytes{hint}; AES-256 key material is exactly {MATERIAL_LEN} raw bytes, \
         e.g. from `openssl rand 32`; nothing was sent",
        material.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age_recipient() -> String {
        age::x25519::Identity::generate().to_public().to_string()
    }

    #[test]
    fn age_recipient_text_is_detected_and_trimmed() {
        let r = age_recipient();
        let got = parse_recipient(format!("  {r}\n").as_bytes(), "f").expect("age");
        assert_eq!(got, Recipient::AgeRecipient(r));
    }

    #[test]
    fn rsa_public_keys_are_sent_as_given_pem_or_der() {
        let wk = wrap::WrappingKey::generate().expect("generate");
        let pem = wk.public_pem().expect("pem");
        let der = wk.public_der().expect("der");
        for bytes in [pem.as_bytes().to_vec(), der] {
            let got = parse_recipient(&bytes, "f").expect("rsa");
            assert_eq!(got, Recipient::RsaPublicKey(bytes));
        }
    }

    #[test]
    fn bad_recipients_are_usage_errors_naming_the_file() {
        let identity = age::x25519::Identity::generate();
        let secret = identity.to_string();
        let identity_file = format!(
            "# created: now\n# public key: {}\n{}\n",
            identity.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&secret)
        );
        let cases: [(&[u8], &str); 9] = [
            (identity_file.as_bytes(), "age identity"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "private key",
            ),
            (b"age1notarecipient", "age X25519 recipient"),
            (b"hello", "neither an RSA public key"),
            (b"", "the file is empty"),
            (b" \n\n", "the file is empty"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "openssl x509 -in cert.pem -pubkey -noout > partner.pub.pem",
            ),
            (b"# only a comment\n", "only comments"),
            (
                b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
                "-RSAPublicKey_in",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse_recipient(bytes, "partner.pem").expect_err("refused");
            assert_eq!(e.code, 2);
            assert!(
                e.message.starts_with("recipient partner.pem: "),
                "{}",
                e.message
            );
            assert!(e.message.contains(want), "{want}: {}", e.message);
            assert!(e.message.ends_with("nothing was sent"), "{}", e.message);
            for internal in ["InvalidEncoding", "WrongAlgorithm"] {
                assert!(!e.message.contains(internal), "{}", e.message);
            }
        }
    }

    #[test]
    fn age_recipients_file_with_comments_has_one_recipient() {
        let r = age_recipient();
        let file = format!("# partner ACME, 2026\n\n{r}\n\n# end\n");
        let got = parse_recipient(file.as_bytes(), "f").expect("one recipient");
        assert_eq!(got, Recipient::AgeRecipient(r.clone()));
        let two = format!("# two\n{r}\n{}\n", age_recipient());
        let e = parse_recipient(two.as_bytes(), "f").expect_err("two");
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("one recipient per export"),
            "{}",
            e.message
        );
    }

    #[test]
    fn recipient_given_on_the_command_line_is_named() {
        let r = age_recipient();
        let e = read_recipient(Path::new(&r)).expect_err("no such file");
        assert_eq!(e.code, 2);
        assert!(
            e.message
                .contains("--recipient takes a FILE holding the recipient"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("echo age1… > partner.txt"),
            "{}",
            e.message
        );
        let e = read_recipient(Path::new("/no/such/partner.pem")).expect_err("missing");
        assert!(
            e.message.starts_with("cannot read recipient"),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrapped_must_be_binary_not_text() {
        let wk = wrap::WrappingKey::generate().expect("generate");
        let blob = wk.recipient().expect("r").wrap(&[5u8; 32]).expect("wrap");
        assert_eq!(blob.len(), 424);
        assert!(check_wrapped(&blob, "w.bin").is_ok());
        let b64 = format!("{}\n", B64.encode(&blob));
        let pem = wrap::pem("WRAPPED KEY", &blob);
        let hex = format!("{}\n", hex::encode(&blob));
        let cases: [(&[u8], &str); 5] = [
            (b64.as_bytes(), "base64 -d w.bin > wrapped.bin"),
            (pem.as_bytes(), "PEM text"),
            (hex.as_bytes(), "xxd -r -p"),
            (b"hello world\n", "is text"),
            (b"", "is empty"),
        ];
        for (bytes, want) in cases {
            let e = check_wrapped(bytes, "w.bin").expect_err("text refused");
            assert_eq!(e.code, 2);
            assert!(e.message.contains(want), "{want}: {}", e.message);
            assert!(e.message.contains("raw binary"), "{}", e.message);
            assert!(e.message.ends_with("nothing was sent"), "{}", e.message);
        }
    }

    #[test]
    fn material_must_be_32_raw_bytes() {
        assert!(check_material(&[7; 32], "m").is_ok());
        for len in [0, 31, 33, 64] {
            // 0xff: never a newline, hex or base64.
            let e = check_material(&vec![0xffu8; len], "m.bin").expect_err("refused");
            assert_eq!(e.code, 2);
            assert!(
                e.message
                    .starts_with(&format!("m.bin is {len} bytes; AES-256 key material")),
                "{}",
                e.message
            );
        }
        let hex = format!("{}\n", hex::encode([0xabu8; 32]));
        let e = check_material(hex.as_bytes(), "m.hex").expect_err("hex");
        assert!(e.message.contains("looks like hex"), "{}", e.message);
        assert!(!e.message.contains("abab"), "never quotes the material");
        let b64 = format!("{}\n", B64.encode([1u8; 32]));
        let e = check_material(b64.as_bytes(), "m.b64").expect_err("base64");
        assert!(e.message.contains("looks like base64"), "{}", e.message);
        let mut newline = vec![9u8; 32];
        newline.push(b'\n');
        let e = check_material(&newline, "m.bin").expect_err("newline");
        assert!(
            e.message
                .contains("ends with a newline: write the raw 32 bytes (e.g. `head -c 32`)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn material_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.bin");
        std::fs::write(&path, [3u8; 32]).expect("write");
        assert_eq!(read_material(&path).expect("ok").len(), 32);
        std::fs::write(&path, [3u8; 16]).expect("write");
        assert_eq!(read_material(&path).expect_err("short").code, 2);
        let e = read_material(&dir.path().join("missing")).expect_err("missing");
        assert_eq!(e.code, 2);
    }

    #[test]
    fn wrap_format_names() {
        assert_eq!(
            format_name(WrapFormat::RsaOaepSha256AesKwp as i32),
            "rsa-oaep-sha256-aes-kwp"
        );
        assert_eq!(format_name(WrapFormat::Age as i32), "age");
    }
}
