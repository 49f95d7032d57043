//! `kms-cli key …`: create, list, show and change the life of named keys (KeyAdmin API);
//! import and export of key material are in [`crate::distribution`].

use clap::Subcommand;
use kms_client::proto::{self, KeyOrigin, KeyPurpose, KeyState, RevocationReason, VersionState};
use serde_json::{Value, json};

use crate::args::{KeyValue, Period, Reason, Rotation, pairs_to_map};
use crate::distribution::{self, Distribution};
use crate::output::{self, Format, Table, period, time, time_or_dash};
use crate::{Conn, Failure};

/// Every `key` command: the life of keys here, import and export in [`crate::distribution`].
#[derive(Subcommand)]
pub(crate) enum Key {
    #[command(flatten)]
    Admin(Admin),
    #[command(flatten)]
    Distribution(Distribution),
}

#[derive(Subcommand)]
pub(crate) enum Admin {
    /// Create a key for encryption and decryption (AES-256-GCM), at version 1.
    #[command(after_help = "Examples:\n  \
        kms-cli key create payments\n  \
        kms-cli key create payments --description \"card tokens\" --label team=billing --rotation-period 90d\n  \
        kms-cli key create partners/acme --exportable      # `kms-cli key export` allowed, for good")]
    Create {
        /// The key's name: '/'-separated segments of a-z 0-9 . _ - (e.g. payments/card-tokens).
        name: String,
        /// Free text shown by `key show`.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// A label KEY=VALUE; repeat for several.
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<KeyValue>,
        /// Rotate automatically this often, e.g. 90d, 12h, 3600s (at least 1h). Default: never.
        #[arg(long, value_name = "DURATION")]
        rotation_period: Option<Period>,
        /// Allow `kms-cli key export` to hand this key's material out, wrapped to a recipient's
        /// public key (policy operation `export` still applies). Irreversible: a key's
        /// exportability is set at creation and never changes, either way.
        #[arg(long)]
        exportable: bool,
    },
    /// List keys, sorted by name.
    #[command(after_help = "Examples:\n  \
        kms-cli key list\n  \
        kms-cli key list --prefix payments/ --all --format json")]
    List {
        /// Only keys whose name starts with this.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// Keys per page (server default 100, at most 1000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: Option<u32>,
        /// Fetch every page, not only the first.
        #[arg(long)]
        all: bool,
        /// Continue from a previous listing's next_page_token (see --format json).
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
    /// Show a key: state, rotation, deletion, labels and every version.
    #[command(
        after_help = "Examples:\n  kms-cli key show payments\n  kms-cli key show payments --format json"
    )]
    Show {
        /// The key's name.
        name: String,
    },
    /// Add a new version and make it the one that encrypts; older versions still decrypt.
    #[command(after_help = "Example:\n  kms-cli key rotate payments")]
    Rotate {
        /// The key's name.
        name: String,
    },
    /// Set or turn off automatic rotation.
    #[command(
        after_help = "Examples:\n  kms-cli key set-rotation payments 90d\n  kms-cli key set-rotation payments off"
    )]
    SetRotation {
        /// The key's name.
        name: String,
        /// How often, e.g. 90d, 12h, 3600s (at least 1h), or `off`.
        #[arg(value_name = "DURATION|off")]
        period: Rotation,
    },
    /// Refuse to decrypt with versions older than V (they are kept, and can be allowed again).
    #[command(after_help = "Example:\n  kms-cli key set-min-decryption-version payments 3")]
    SetMinDecryptionVersion {
        /// The key's name.
        name: String,
        /// The oldest version allowed to decrypt.
        #[arg(value_name = "V")]
        version: u32,
    },
    /// Stop all use of a key (encrypt and decrypt) until it is enabled again.
    #[command(after_help = "Example:\n  kms-cli key disable payments")]
    Disable {
        /// The key's name.
        name: String,
    },
    /// Allow a disabled key to be used again.
    #[command(after_help = "Example:\n  kms-cli key enable payments")]
    Enable {
        /// The key's name.
        name: String,
    },
    /// Revoke one version for good: it no longer encrypts or decrypts.
    #[command(
        after_help = "Example:\n  kms-cli key revoke payments --version 2 --reason compromised"
    )]
    Revoke {
        /// The key's name.
        name: String,
        /// The version to revoke.
        #[arg(long, value_name = "V")]
        version: u32,
        /// Why: recorded with the version and in the audit log.
        #[arg(long, value_enum)]
        reason: Reason,
    },
    /// Schedule the destruction of a key after a waiting period; it cannot be used meanwhile.
    #[command(after_help = "Examples:\n  \
        kms-cli key schedule-deletion payments            # in 30 days (the server's default)\n  \
        kms-cli key schedule-deletion payments --days 7\n\
        Until the date, `kms-cli key cancel-deletion NAME` restores the key.")]
    ScheduleDeletion {
        /// The key's name.
        name: String,
        /// Waiting period in days (server default 30, minimum 7 unless the server allows less).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        days: Option<u32>,
    },
    /// Cancel a scheduled deletion; the key gets back the state it had (enabled or disabled).
    #[command(after_help = "Example:\n  kms-cli key cancel-deletion payments")]
    CancelDeletion {
        /// The key's name.
        name: String,
    },
}

/// Runs one `key` command.
pub(crate) async fn run(cmd: Key, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Key::Admin(cmd) => admin(cmd, conn, fmt).await,
        Key::Distribution(cmd) => distribution::run(cmd, conn, fmt).await,
    }
}

/// Runs one key administration command; `--label` duplicates are refused before connecting.
async fn admin(cmd: Admin, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    // Local checks first: nothing is sent if these fail.
    let labels = match &cmd {
        Admin::Create { label, .. } => pairs_to_map(label, "--label")?,
        _ => Default::default(),
    };
    let client = crate::connect(conn).await?;
    let mut admin = client.key_admin();
    let named = |name: &str| proto::KeyNameRequest {
        name: name.to_string(),
    };
    match cmd {
        Admin::Create {
            name,
            description,
            label: _,
            rotation_period,
            exportable,
        } => {
            let req = proto::CreateKeyRequest {
                name,
                purpose: KeyPurpose::EncryptDecrypt.into(),
                description: description.unwrap_or_default(),
                labels,
                rotation_period_seconds: rotation_period.map_or(0, |p| p.0),
                exportable,
            };
            let key = client.call(admin.create_key(req)).await?;
            let rotation = match key.rotation_period_seconds {
                0 => "no automatic rotation".to_string(),
                s => format!("rotates every {}", period(s)),
            };
            let export = if key.exportable { ", exportable" } else { "" };
            done(
                fmt,
                &key,
                format!(
                    "key {} created (id {}), version {}, {rotation}{export}",
                    key.name, key.id, key.latest_version
                ),
            )
        }
        Admin::List {
            prefix,
            page_size,
            all,
            page_token,
        } => {
            let mut req = proto::ListKeysRequest {
                prefix: prefix.unwrap_or_default(),
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
            };
            let mut keys = Vec::new();
            let next = loop {
                let resp = client.call(admin.list_keys(req.clone())).await?;
                keys.extend(resp.keys);
                if !all || resp.next_page_token.is_empty() {
                    break resp.next_page_token;
                }
                req.page_token = resp.next_page_token;
            };
            print_list(fmt, &keys, &next, &req.prefix)
        }
        Admin::Show { name } => {
            let key = client
                .call(admin.get_key(proto::GetKeyRequest { name }))
                .await?;
            match fmt {
                Format::Json => output::json(&key_json(&key)),
                Format::Human => output::print(&key_detail(&key)),
            }
        }
        Admin::Rotate { name } => {
            let key = client
                .call(admin.rotate_key(proto::RotateKeyRequest { name }))
                .await?;
            let msg = format!(
                "key {} rotated: version {} now encrypts; older versions still decrypt",
                key.name, key.latest_version
            );
            done(fmt, &key, msg)
        }
        Admin::SetRotation { name, period: p } => {
            let req = proto::UpdateKeyConfigRequest {
                name,
                rotation_period_seconds: Some(p.seconds()),
                ..Default::default()
            };
            let key = client.call(admin.update_key_config(req)).await?;
            let msg = match (key.rotation_period_seconds, time(key.next_rotation_unix)) {
                (0, _) => format!("key {}: automatic rotation off", key.name),
                (s, Some(next)) => format!(
                    "key {}: rotates every {}, next at {next}",
                    key.name,
                    period(s)
                ),
                (s, None) => format!("key {}: rotates every {}", key.name, period(s)),
            };
            done(fmt, &key, msg)
        }
        Admin::SetMinDecryptionVersion { name, version } => {
            let req = proto::UpdateKeyConfigRequest {
                name,
                min_decryption_version: Some(version),
                ..Default::default()
            };
            let key = client.call(admin.update_key_config(req)).await?;
            let msg = format!(
                "key {}: versions {}..={} decrypt; older ones are refused",
                key.name, key.min_decryption_version, key.latest_version
            );
            done(fmt, &key, msg)
        }
        Admin::Disable { name } => {
            let key = client.call(admin.disable_key(named(&name))).await?;
            let msg = format!(
                "key {} disabled: it neither encrypts nor decrypts until `kms-cli key enable {}`",
                key.name, key.name
            );
            done(fmt, &key, msg)
        }
        Admin::Enable { name } => {
            let key = client.call(admin.enable_key(named(&name))).await?;
            let msg = format!("key {} is {}", key.name, key_state(key.state));
            done(fmt, &key, msg)
        }
        Admin::Revoke {
            name,
            version,
            reason,
        } => {
            let reason = RevocationReason::from(reason);
            let req = proto::RevokeKeyVersionRequest {
                name,
                version,
                reason: reason.into(),
            };
            let key = client.call(admin.revoke_key_version(req)).await?;
            let msg = format!(
                "key {} version {version} revoked ({}): it no longer encrypts or decrypts",
                key.name,
                reason_name(reason.into())
            );
            done(fmt, &key, msg)
        }
        Admin::ScheduleDeletion { name, days } => {
            let req = proto::ScheduleKeyDeletionRequest {
                name,
                waiting_period_days: days,
            };
            let key = client.call(admin.schedule_key_deletion(req)).await?;
            let msg = format!(
                "key {} will be destroyed at {}; until then `kms-cli key cancel-deletion {}` restores it",
                key.name,
                time_or_dash(key.deletion_unix),
                key.name
            );
            done(fmt, &key, msg)
        }
        Admin::CancelDeletion { name } => {
            let key = client.call(admin.cancel_key_deletion(named(&name))).await?;
            let msg = format!(
                "key {}: deletion cancelled, the key is {}",
                key.name,
                key_state(key.state)
            );
            done(fmt, &key, msg)
        }
    }
}

/// After a change: the key as JSON, or one sentence.
fn done(fmt: Format, key: &proto::Key, sentence: String) -> Result<(), Failure> {
    match fmt {
        Format::Json => output::json(&key_json(key)),
        Format::Human => output::print(&format!("{sentence}\n")),
    }
}

fn print_list(fmt: Format, keys: &[proto::Key], next: &str, prefix: &str) -> Result<(), Failure> {
    if fmt == Format::Json {
        let list: Vec<Value> = keys.iter().map(key_json).collect();
        return output::json(&json!({"keys": list, "next_page_token": next}));
    }
    if keys.is_empty() && next.is_empty() {
        let msg = if prefix.is_empty() {
            "no keys yet: create one with `kms-cli key create NAME`\n".to_string()
        } else {
            format!("no key name starts with {prefix:?}\n")
        };
        return output::print(&msg);
    }
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "LATEST",
        "MIN-DECRYPT",
        "ROTATION",
        "ORIGIN",
        "EXPORTABLE",
        "CREATED",
    ]);
    for k in keys {
        table.row(vec![
            k.name.clone(),
            key_state(k.state),
            k.latest_version.to_string(),
            k.min_decryption_version.to_string(),
            rotation(k.rotation_period_seconds),
            origin(k.origin),
            yes_no(k.exportable),
            time_or_dash(k.created_unix),
        ]);
    }
    let mut text = table.render();
    if !next.is_empty() {
        text.push_str(&format!(
            "(more keys follow: add --all, or --page-token {next})\n"
        ));
    }
    output::print(&text)
}

fn rotation(secs: u64) -> String {
    match secs {
        0 => "off".into(),
        s => period(s),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `key show` for people: one field per line, then the versions as a table.
pub(crate) fn key_detail(k: &proto::Key) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("name", k.name.clone()),
        ("id", k.id.clone()),
        ("purpose", purpose(k.purpose)),
        ("state", key_state(k.state)),
        ("origin", origin(k.origin)),
        ("exportable", yes_no(k.exportable)),
        ("description", k.description.clone()),
    ];
    let mut labels: Vec<String> = k.labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
    labels.sort();
    lines.push(("labels", labels.join(", ")));
    lines.push(("latest version", k.latest_version.to_string()));
    lines.push(("min decryption", k.min_decryption_version.to_string()));
    lines.push(("rotation", rotation(k.rotation_period_seconds)));
    if k.rotation_period_seconds != 0 {
        lines.push(("next rotation", time_or_dash(k.next_rotation_unix)));
    }
    lines.push(("created", time_or_dash(k.created_unix)));
    lines.push(("updated", time_or_dash(k.updated_unix)));
    if k.deletion_unix != 0 {
        lines.push(("deletion at", time_or_dash(k.deletion_unix)));
    }
    if k.destroyed_unix != 0 {
        lines.push(("destroyed", time_or_dash(k.destroyed_unix)));
    }
    let mut out = String::new();
    for (field, value) in lines {
        let value = if value.is_empty() { "-".into() } else { value };
        out.push_str(&format!("{:<16}{value}\n", format!("{field}:")));
    }
    out.push('\n');
    let mut table = Table::new(&[
        "VERSION",
        "STATE",
        "CREATED",
        "REVOKED",
        "REASON",
        "ENCRYPTIONS",
    ]);
    for v in &k.versions {
        table.row(vec![
            v.version.to_string(),
            version_state(v.state),
            time_or_dash(v.created_unix),
            time_or_dash(v.revoked_unix),
            if v.revocation_reason == 0 {
                "-".into()
            } else {
                reason_name(v.revocation_reason)
            },
            v.encryptions.to_string(),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// A key as JSON: the wire fields, enums as lowercase names, times as ISO-8601 UTC or null.
pub(crate) fn key_json(k: &proto::Key) -> Value {
    let versions: Vec<Value> = k
        .versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "state": version_state(v.state),
                "revocation_reason": (v.revocation_reason != 0).then(|| reason_name(v.revocation_reason)),
                "created": time(v.created_unix),
                "revoked": time(v.revoked_unix),
                "encryptions": v.encryptions,
            })
        })
        .collect();
    json!({
        "name": k.name,
        "id": k.id,
        "purpose": purpose(k.purpose),
        "state": key_state(k.state),
        "origin": origin(k.origin),
        "exportable": k.exportable,
        "latest_version": k.latest_version,
        "min_decryption_version": k.min_decryption_version,
        "rotation_period_seconds": k.rotation_period_seconds,
        "description": k.description,
        "labels": k.labels,
        "created": time(k.created_unix),
        "updated": time(k.updated_unix),
        "next_rotation": time(k.next_rotation_unix),
        "deletion": time(k.deletion_unix),
        "destroyed": time(k.destroyed_unix),
        "versions": versions,
    })
}

/// `KEY_STATE_PENDING_DELETION` → `pending-deletion`; an unknown number stays visible.
pub(crate) fn enum_name(name: Option<&str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(n) => n
            .strip_prefix(prefix)
            .unwrap_or(n)
            .to_ascii_lowercase()
            .replace('_', "-"),
        None => format!("unknown({raw})"),
    }
}

fn key_state(raw: i32) -> String {
    let name = KeyState::try_from(raw).ok().map(|s| s.as_str_name());
    enum_name(name, "KEY_STATE_", raw)
}

fn version_state(raw: i32) -> String {
    let name = VersionState::try_from(raw).ok().map(|s| s.as_str_name());
    enum_name(name, "VERSION_STATE_", raw)
}

fn reason_name(raw: i32) -> String {
    let name = RevocationReason::try_from(raw)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "REVOCATION_REASON_", raw)
}

/// `kms` (generated inside the KMS) or `external` (imported).
fn origin(raw: i32) -> String {
    let name = KeyOrigin::try_from(raw).ok().map(|s| s.as_str_name());
    enum_name(name, "KEY_ORIGIN_", raw)
}

fn purpose(raw: i32) -> String {
    let name = KeyPurpose::try_from(raw).ok().map(|s| s.as_str_name());
    enum_name(name, "KEY_PURPOSE_", raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_short_and_lowercase() {
        assert_eq!(
            key_state(KeyState::PendingDeletion as i32),
            "pending-deletion"
        );
        assert_eq!(
            version_state(VersionState::DecryptOnly as i32),
            "decrypt-only"
        );
        assert_eq!(
            reason_name(RevocationReason::Compromised as i32),
            "compromised"
        );
        assert_eq!(
            purpose(KeyPurpose::EncryptDecrypt as i32),
            "encrypt-decrypt"
        );
        assert_eq!(origin(KeyOrigin::External as i32), "external");
        assert_eq!(origin(KeyOrigin::Kms as i32), "kms");
        assert_eq!(key_state(99), "unknown(99)");
    }

    #[test]
    fn detail_shows_versions_and_iso_times() {
        let key = proto::Key {
            name: "payments".into(),
            id: "ab12".into(),
            purpose: KeyPurpose::EncryptDecrypt as i32,
            state: KeyState::Enabled as i32,
            latest_version: 2,
            min_decryption_version: 1,
            rotation_period_seconds: 90 * 86_400,
            created_unix: 1_700_000_000,
            origin: KeyOrigin::External as i32,
            exportable: true,
            versions: vec![
                proto::KeyVersion {
                    version: 1,
                    state: VersionState::Revoked as i32,
                    revocation_reason: RevocationReason::Superseded as i32,
                    created_unix: 1_700_000_000,
                    revoked_unix: 1_700_000_060,
                    encryptions: 7,
                },
                proto::KeyVersion {
                    version: 2,
                    state: VersionState::Active as i32,
                    created_unix: 1_700_000_060,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = key_detail(&key);
        assert!(text.contains("rotation:       90d"), "{text}");
        assert!(text.contains("origin:         external"), "{text}");
        assert!(text.contains("exportable:     yes"), "{text}");
        assert!(
            text.contains("created:        2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(
            text.contains(
                "1        revoked  2023-11-14T22:13:20Z  2023-11-14T22:14:20Z  superseded  7"
            ),
            "{text}"
        );
        let v = key_json(&key);
        assert_eq!(v["versions"][0]["revocation_reason"], "superseded");
        assert_eq!(v["versions"][1]["revocation_reason"], Value::Null);
        assert_eq!(v["deletion"], Value::Null);
        assert_eq!(v["created"], "2023-11-14T22:13:20Z");
        assert_eq!(
            (v["origin"].as_str(), v["exportable"].as_bool()),
            (Some("external"), Some(true))
        );
    }
}
