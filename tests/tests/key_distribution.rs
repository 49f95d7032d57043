//! Key distribution through the real server (issue 8): bring your own key (GetImportParameters,
//! ImportKeyMaterial), export to a recipient (ExportKey) and data keys for a recipient, checked
//! with independent tools (the `openssl` CLI, the `age` crate) so that the wire format is
//! proven interoperable and not only self-consistent.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kms_client::Client;
use kms_client::proto as pb;
use kms_core::Secret32;
use kms_core::ciphertext::{self, EncryptionContext};
use kms_core::wrap::{RsaRecipient, WrappingKey};
use kms_tests::{
    FAST_LIFECYCLE, Installation, base32_decode, cli_json, ctx, init, start_unsealed, status,
    unseal_with,
};
use tonic::Code;

const OPENSSL: &str = "/usr/bin/openssl";
/// The RFC 5649 alternative initial value: `openssl enc -id-aes256-wrap-pad` needs it given.
const KWP_IV: &str = "A65959A6";
const OAEP: [&str; 6] = [
    "-pkeyopt",
    "rsa_padding_mode:oaep",
    "-pkeyopt",
    "rsa_oaep_md:sha256",
    "-pkeyopt",
    "rsa_mgf1_md:sha256",
];

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn secret(bytes: &[u8]) -> Secret32 {
    Secret32::from_slice(bytes).unwrap()
}

/// Runs `openssl ARGS`; panics with its stderr if it fails.
fn openssl(args: &[&str]) {
    let out = Command::new(OPENSSL).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a kms-cli run succeeded; returns its stdout.
fn cli_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kms-cli failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create(c: &Client, name: &str, exportable: bool) -> pb::Key {
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: name.into(),
        exportable,
        ..Default::default()
    }))
    .await
    .unwrap()
}

async fn get(c: &Client, name: &str) -> Result<pb::Key, tonic::Status> {
    c.call(
        c.key_admin()
            .get_key(pb::GetKeyRequest { name: name.into() }),
    )
    .await
    .map_err(status)
}

async fn params(c: &Client, name: &str) -> Result<pb::ImportParameters, tonic::Status> {
    c.call(
        c.key_admin()
            .get_import_parameters(pb::GetImportParametersRequest { name: name.into() }),
    )
    .await
    .map_err(status)
}

/// `material` (any length) wrapped to the parameters' public key with the KMS's own scheme.
fn wrap_to(params: &pb::ImportParameters, material: &[u8]) -> Vec<u8> {
    RsaRecipient::from_der(&params.wrapping_public_key_der)
        .unwrap()
        .wrap(material)
        .unwrap()
}

fn import_req(name: &str, token: &str, wrapped: Vec<u8>) -> pb::ImportKeyMaterialRequest {
    pb::ImportKeyMaterialRequest {
        name: name.into(),
        import_token: token.into(),
        wrapped_material: wrapped,
        ..Default::default()
    }
}

async fn import(c: &Client, req: pb::ImportKeyMaterialRequest) -> Result<pb::Key, tonic::Status> {
    c.call(c.key_admin().import_key_material(req))
        .await
        .map_err(status)
}

/// Fresh parameters for `name`, then `material` wrapped and imported.
async fn import_material(
    c: &Client,
    name: &str,
    material: &[u8],
    exportable: bool,
) -> Result<pb::Key, tonic::Status> {
    let prm = params(c, name).await?;
    let mut req = import_req(name, &prm.import_token, wrap_to(&prm, material));
    req.exportable = exportable;
    import(c, req).await
}

fn rsa_recipient(pem: &str) -> Option<pb::Recipient> {
    Some(pb::Recipient {
        recipient: Some(pb::recipient::Recipient::RsaPublicKey(
            pem.as_bytes().to_vec(),
        )),
    })
}

fn age_recipient(r: &str) -> Option<pb::Recipient> {
    Some(pb::Recipient {
        recipient: Some(pb::recipient::Recipient::AgeRecipient(r.into())),
    })
}

async fn export(
    c: &Client,
    name: &str,
    version: u32,
    recipient: Option<pb::Recipient>,
) -> Result<pb::ExportKeyResponse, tonic::Status> {
    c.call(c.key_admin().export_key(pb::ExportKeyRequest {
        name: name.into(),
        version,
        recipient,
    }))
    .await
    .map_err(status)
}

/// Proves the KMS holds `material` as the latest version of `name`, both ways: a KMS
/// ciphertext opens locally with it, and a ciphertext sealed locally with it decrypts in the
/// KMS.
async fn assert_kms_holds(c: &Client, name: &str, material: &[u8]) {
    let key = get(c, name).await.unwrap();
    let m = secret(material);
    let aad = ctx(&[("tenant", "byok")]);
    let local_ctx = EncryptionContext::new(aad.clone()).unwrap();
    let ct = c
        .encrypt(name, b"sealed by the KMS".to_vec(), aad.clone())
        .await
        .unwrap();
    assert_eq!(ct.version, key.latest_version);
    let opened = ciphertext::open(&m, &ct.ciphertext, &local_ctx)
        .unwrap_or_else(|e| panic!("the KMS ciphertext does not open with the material: {e}"));
    assert_eq!(opened.as_slice(), b"sealed by the KMS");
    let local = ciphertext::seal(
        &m,
        key.id.parse().unwrap(),
        key.latest_version,
        &local_ctx,
        b"sealed locally",
    )
    .unwrap();
    let back = c.decrypt(local, aad).await.unwrap();
    assert_eq!(back.plaintext, b"sealed locally");
}

/// The installation's audit records.
fn records(inst: &Installation) -> Vec<serde_json::Value> {
    std::fs::read_to_string(inst.root.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts the audit log holds a record of `operation` on `key` with status `code`.
fn assert_audited(recs: &[serde_json::Value], operation: &str, key: &str, code: &str) {
    assert!(
        recs.iter()
            .any(|r| r["operation"] == operation && r["key"] == key && r["code"] == code),
        "no audit record {operation} {key} {code} in {:#?}",
        recs.iter()
            .filter(|r| r["operation"] == operation)
            .collect::<Vec<_>>()
    );
}

/// An RSA-3072 key pair made by openssl: (private PEM path, public PEM path).
fn openssl_rsa(dir: &Path, stem: &str, bits: u32) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{stem}.key.pem"));
    let public = dir.join(format!("{stem}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        &format!("rsa_keygen_bits:{bits}"),
        "-out",
        &p(&private),
    ]);
    openssl(&["pkey", "-in", &p(&private), "-pubout", "-out", &p(&public)]);
    (private, public)
}

/// Wraps the 32 bytes in `material` to the PEM public key `public` with openssl only, under
/// the KEK in `kek` (both files); writes the blob to `out`.
fn openssl_wrap(dir: &Path, public: &Path, kek: &Path, material: &Path, out: &Path) {
    let kek_hex = hex::encode(std::fs::read(kek).unwrap());
    let kwp = dir.join("openssl-wrap.kwp");
    let rsa = dir.join("openssl-wrap.rsa");
    openssl(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &kek_hex,
        "-iv",
        KWP_IV,
        "-in",
        &p(material),
        "-out",
        &p(&kwp),
    ]);
    let mut args = vec!["pkeyutl", "-encrypt", "-pubin", "-inkey"];
    let public = p(public);
    args.push(&public);
    args.extend(OAEP);
    let (kek_s, rsa_s) = (p(kek), p(&rsa));
    args.extend(["-in", &kek_s, "-out", &rsa_s]);
    openssl(&args);
    let mut blob = std::fs::read(&rsa).unwrap();
    assert_eq!(blob.len(), 384, "openssl's RSA-OAEP part");
    blob.extend(std::fs::read(&kwp).unwrap());
    std::fs::write(out, blob).unwrap();
}

/// Opens a `RSA-OAEP ‖ AES-KWP` blob with openssl only; returns (KEK, material).
fn openssl_unwrap(dir: &Path, private: &Path, blob: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(blob.len() > 384, "blob of {} bytes", blob.len());
    let (rsa_part, kwp_part) = blob.split_at(384);
    let rsa = dir.join("openssl-unwrap.rsa");
    let kwp = dir.join("openssl-unwrap.kwp");
    let kek = dir.join("openssl-unwrap.kek");
    let material = dir.join("openssl-unwrap.material");
    std::fs::write(&rsa, rsa_part).unwrap();
    std::fs::write(&kwp, kwp_part).unwrap();
    let mut args = vec!["pkeyutl", "-decrypt", "-inkey"];
    let private = p(private);
    args.push(&private);
    args.extend(OAEP);
    let (rsa_s, kek_s) = (p(&rsa), p(&kek));
    args.extend(["-in", &rsa_s, "-out", &kek_s]);
    openssl(&args);
    let kek_bytes = std::fs::read(&kek).unwrap();
    assert_eq!(kek_bytes.len(), 32, "the RSA part holds an AES-256 KEK");
    openssl(&[
        "enc",
        "-d",
        "-id-aes256-wrap-pad",
        "-K",
        &hex::encode(&kek_bytes),
        "-iv",
        KWP_IV,
        "-in",
        &p(&kwp),
        "-out",
        &p(&material),
    ]);
    (kek_bytes, std::fs::read(&material).unwrap())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Bring your own key with openssl alone: `kms-cli key import-params` gives the wrapping
/// public key and token, openssl makes the material and the KEK and wraps them (RSA-OAEP
/// SHA-256 ‖ AES-KWP), `kms-cli key import --wrapped` sends the blob; the KMS then holds
/// exactly that material (its ciphertexts open locally with it, and local ones decrypt in it).
/// [RègleInjectionClé, RègleAcheminementCléCentral-1: injected wrapped end to end, in a format
/// standard tools produce]
#[tokio::test]
async fn openssl_import_round_trip() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let dir = inst.root.path();
    let public = dir.join("wrapping.pub.pem");

    let prm = cli_json(&server.cli(&[
        "--format",
        "json",
        "key",
        "import-params",
        "byok/openssl",
        "--public-key-out",
        &p(&public),
    ]));
    assert_eq!(prm["name"], "byok/openssl", "{prm}");
    assert_eq!(prm["wrapping_format"], "rsa-oaep-sha256-aes-kwp", "{prm}");
    let token = prm["import_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    assert!(
        prm["expires"].as_str().is_some_and(|e| !e.is_empty()),
        "{prm}"
    );
    let pem = std::fs::read_to_string(&public).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert_eq!(prm["wrapping_public_key_pem"].as_str(), Some(pem.as_str()));

    let material = dir.join("material.bin");
    let kek = dir.join("kek.bin");
    openssl(&["rand", "-out", &p(&material), "32"]);
    openssl(&["rand", "-out", &p(&kek), "32"]);
    let wrapped = dir.join("wrapped.bin");
    openssl_wrap(dir, &public, &kek, &material, &wrapped);
    assert_eq!(std::fs::read(&wrapped).unwrap().len(), 384 + 40);

    let out = server.cli(&[
        "--format",
        "json",
        "key",
        "import",
        "byok/openssl",
        "--token",
        &token,
        "--wrapped",
        &p(&wrapped),
        "--description",
        "brought by its owner",
        "--label",
        "team=pay",
    ]);
    let shown = cli_json(&out);
    assert_eq!(shown["name"], "byok/openssl", "{shown}");
    // The CLI output never echoes the token.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));

    let key = get(&c, "byok/openssl").await.unwrap();
    assert_eq!(key.origin, pb::KeyOrigin::External as i32);
    assert_eq!((key.latest_version, key.exportable), (1, false));
    assert_eq!(key.state, pb::KeyState::Enabled as i32);
    assert_eq!(key.description, "brought by its owner");
    assert_eq!(key.labels, ctx(&[("team", "pay")]));
    let m = std::fs::read(&material).unwrap();
    assert_kms_holds(&c, "byok/openssl", &m).await;

    // The gRPC view of the parameters: 24 hours by default, the documented format, and the
    // same key in DER and PEM.
    let g = params(&c, "byok/other").await.unwrap();
    let ttl = g.expires_unix - now_unix();
    assert!((86_400 - 120..=86_400 + 5).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        g.wrapping_format,
        pb::WrapFormat::RsaOaepSha256AesKwp as i32
    );
    assert_eq!(
        RsaRecipient::parse(g.wrapping_public_key_pem.as_bytes())
            .unwrap()
            .bits(),
        3072
    );
    assert_ne!(g.import_token, token, "tokens are fresh");
}

/// Export with openssl alone on the receiving side: openssl makes an RSA-3072 key pair,
/// `kms-cli key export --recipient pub.pem` writes the wrapped material, and openssl opens it
/// (split at 384 bytes, `pkeyutl -decrypt`, `enc -d -id-aes256-wrap-pad`); the material opens
/// the KMS's ciphertexts of that version. `--version` picks an older version.
/// [RègleAcheminementCléCentral-1: a key leaves wrapped end to end to its recipient]
#[tokio::test]
async fn openssl_export_round_trip() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let dir = inst.root.path();
    let (private, public) = openssl_rsa(dir, "partner", 3072);

    cli_ok(&server.cli(&["key", "create", "exp/openssl", "--exportable"]));
    let key = get(&c, "exp/openssl").await.unwrap();
    assert!(key.exportable);
    assert_eq!(key.origin, pb::KeyOrigin::Kms as i32);
    let aad = ctx(&[("app", "export")]);
    let local_ctx = EncryptionContext::new(aad.clone()).unwrap();
    let ct1 = c
        .encrypt("exp/openssl", b"version one".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;

    let w1 = dir.join("w1.bin");
    cli_ok(&server.cli(&[
        "key",
        "export",
        "exp/openssl",
        "--recipient",
        &p(&public),
        "--out",
        &p(&w1),
    ]));
    let blob = std::fs::read(&w1).unwrap();
    assert_eq!(blob.len(), 384 + 40);
    let (_, m1) = openssl_unwrap(dir, &private, &blob);
    assert_eq!(m1.len(), 32);
    let opened = ciphertext::open(&secret(&m1), &ct1, &local_ctx).unwrap();
    assert_eq!(opened.as_slice(), b"version one");

    // Rotate: latest is v2, and --version 1 still gives v1's material.
    c.call(c.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "exp/openssl".into(),
    }))
    .await
    .unwrap();
    let ct2 = c
        .encrypt("exp/openssl", b"version two".to_vec(), aad.clone())
        .await
        .unwrap();
    assert_eq!(ct2.version, 2);
    let latest = cli_json(&server.cli(&[
        "--format",
        "json",
        "key",
        "export",
        "exp/openssl",
        "--recipient",
        &p(&public),
    ]));
    assert_eq!(latest["version"], 2, "{latest}");
    assert_eq!(latest["name"], "exp/openssl", "{latest}");
    let blob2 = b64_decode(latest["wrapped_material_base64"].as_str().unwrap()).unwrap();
    let (_, m2) = openssl_unwrap(dir, &private, &blob2);
    assert_ne!(m1, m2);
    let opened = ciphertext::open(&secret(&m2), &ct2.ciphertext, &local_ctx).unwrap();
    assert_eq!(opened.as_slice(), b"version two");
    let w1_again = dir.join("w1-again.bin");
    cli_ok(&server.cli(&[
        "key",
        "export",
        "exp/openssl",
        "--version",
        "1",
        "--recipient",
        &p(&public),
        "--out",
        &p(&w1_again),
    ]));
    let again = std::fs::read(&w1_again).unwrap();
    assert_ne!(again, blob, "each export wraps under a fresh KEK");
    assert_eq!(openssl_unwrap(dir, &private, &again).1, m1);

    // The recipient may also be given as DER.
    let der = dir.join("partner.pub.der");
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        &p(&public),
        "-outform",
        "DER",
        "-out",
        &p(&der),
    ]);
    let r = export(
        &c,
        "exp/openssl",
        0,
        Some(pb::Recipient {
            recipient: Some(pb::recipient::Recipient::RsaPublicKey(
                std::fs::read(&der).unwrap(),
            )),
        }),
    )
    .await
    .unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.format, pb::WrapFormat::RsaOaepSha256AesKwp as i32);
    assert_eq!(openssl_unwrap(dir, &private, &r.wrapped_material).1, m2);
}

/// Export to an age X25519 recipient: with the CLI (a recipient file holding `age1…`) and
/// with gRPC, the result is a binary age file that `age::decrypt` opens with the identity to
/// the key's material. [RègleAcheminementCléCentral-1]
#[tokio::test]
async fn age_export_round_trip() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let dir = inst.root.path();
    create(&c, "exp/age", true).await;
    let aad = ctx(&[]);
    let ct = c
        .encrypt("exp/age", b"for age".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let rfile = dir.join("recipient.txt");
    std::fs::write(&rfile, format!("{recipient}\n")).unwrap();

    let out = dir.join("exp.age");
    cli_ok(&server.cli(&[
        "key",
        "export",
        "exp/age",
        "--recipient",
        &p(&rfile),
        "--out",
        &p(&out),
    ]));
    let m = age::decrypt(&identity, &std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(m.len(), 32);
    let opened = ciphertext::open(&secret(&m), &ct, &EncryptionContext::new(aad).unwrap()).unwrap();
    assert_eq!(opened.as_slice(), b"for age");

    let r = export(&c, "exp/age", 0, age_recipient(&recipient))
        .await
        .unwrap();
    assert_eq!(r.format, pb::WrapFormat::Age as i32);
    assert_eq!((r.name.as_str(), r.version), ("exp/age", 1));
    assert_eq!(age::decrypt(&identity, &r.wrapped_material).unwrap(), m);
    // Another identity cannot open it.
    let stranger = age::x25519::Identity::generate();
    assert!(age::decrypt(&stranger, &r.wrapped_material).is_err());

    // Only usable material leaves: not a revoked version, nothing of a disabled key.
    c.call(c.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "exp/age".into(),
    }))
    .await
    .unwrap();
    c.call(
        c.key_admin()
            .revoke_key_version(pb::RevokeKeyVersionRequest {
                name: "exp/age".into(),
                version: 1,
                reason: pb::RevocationReason::Compromised as i32,
            }),
    )
    .await
    .unwrap();
    let s = export(&c, "exp/age", 1, age_recipient(&recipient))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    export(&c, "exp/age", 2, age_recipient(&recipient))
        .await
        .unwrap();
    c.call(c.key_admin().disable_key(pb::KeyNameRequest {
        name: "exp/age".into(),
    }))
    .await
    .unwrap();
    let s = export(&c, "exp/age", 0, age_recipient(&recipient))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
}

/// A key not created exportable is never exported, whoever asks: the operator (every
/// operation granted), an administrator granted every operation, a service granted only
/// `export` all get FAILED_PRECONDITION naming the key; a principal without the `export` grant
/// gets PERMISSION_DENIED (checked first, so it learns nothing about exportability). An
/// imported key follows its own `exportable`. Refusals are audited; the CLI exits 1 and writes
/// no file. A missing or unusable recipient is INVALID_ARGUMENT.
/// [RègleAcheminementCléCentral-1; SNC 9.2: least privilege]
#[tokio::test]
async fn non_exportable_keys_are_never_exported() {
    let inst = Installation::new();
    std::fs::write(
        inst.policies_dir().join("export.toml"),
        r#"
[[rule]]
id = "admin-everything"
effect = "allow"
principals = ["spiffe://kms.dev/admin"]
operations = ["encrypt", "decrypt", "reencrypt", "generate-data-key", "generate-random",
  "create", "read", "list", "rotate", "configure", "disable", "enable", "revoke",
  "schedule-deletion", "cancel-deletion", "import", "export", "seal", "rekey",
  "rotate-barrier", "backup", "policy-read", "policy-reload", "audit-read"]
keys = ["**"]

[[rule]]
id = "service-export-only"
effect = "allow"
principals = ["spiffe://kms.dev/service"]
operations = ["export"]
keys = ["**"]

[[rule]]
id = "auditor-no-export"
effect = "allow"
principals = ["spiffe://kms.dev/auditor"]
operations = ["read", "encrypt", "decrypt", "import"]
keys = ["**"]
"#,
    )
    .unwrap();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let wk = WrappingKey::generate().unwrap();
    let pem = wk.public_pem().unwrap();

    create(&c, "plain/k", false).await;
    create(&c, "plain/exportable", true).await;
    assert!(!get(&c, "plain/k").await.unwrap().exportable);
    for who in ["client", "admin", "service"] {
        let cl = server.client_as(&inst.pki, who).await;
        let s = export(&cl, "plain/k", 0, rsa_recipient(&pem))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition, "{who}: {}", s.message());
        assert!(
            s.message().contains("plain/k") && s.message().contains("not exportable"),
            "{who}: {}",
            s.message()
        );
        // The same principal may export the exportable key: the refusal was about the key.
        let ok = export(&cl, "plain/exportable", 0, rsa_recipient(&pem))
            .await
            .unwrap();
        assert_eq!(wk.unwrap(&ok.wrapped_material).unwrap().expose().len(), 32);
    }
    for who in ["other", "auditor"] {
        let cl = server.client_as(&inst.pki, who).await;
        for name in ["plain/k", "plain/exportable"] {
            let s = export(&cl, name, 0, rsa_recipient(&pem)).await.unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied, "{who} {name}: {s:?}");
        }
    }

    // An imported key: exportable only when imported so.
    let m_no = [0x11u8; 32];
    let m_yes = [0x22u8; 32];
    import_material(&c, "plain/imported", &m_no, false)
        .await
        .unwrap();
    import_material(&c, "plain/imported-exportable", &m_yes, true)
        .await
        .unwrap();
    let s = export(&c, "plain/imported", 0, rsa_recipient(&pem))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    let r = export(&c, "plain/imported-exportable", 0, rsa_recipient(&pem))
        .await
        .unwrap();
    assert_eq!(wk.unwrap(&r.wrapped_material).unwrap().expose(), &m_yes);

    // Recipients: none, too small, not a key, not an age recipient.
    let small = {
        let (_, public) = openssl_rsa(inst.root.path(), "small", 2048);
        std::fs::read_to_string(public).unwrap()
    };
    for (what, r) in [
        ("none", None),
        ("empty oneof", Some(pb::Recipient { recipient: None })),
        ("RSA-2048", rsa_recipient(&small)),
        ("garbage", rsa_recipient("not a key")),
        ("bad age", age_recipient("age1notarecipient")),
    ] {
        let s = export(&c, "plain/exportable", 0, r).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
    }
    let s = export(&c, "plain/exportable", 0, rsa_recipient(&small))
        .await
        .unwrap_err();
    assert!(s.message().contains("3072"), "{}", s.message());
    // A version that does not exist.
    let s = export(&c, "plain/exportable", 9, rsa_recipient(&pem))
        .await
        .unwrap_err();
    assert!(
        matches!(
            s.code(),
            Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
        ),
        "{s:?}"
    );
    // The message names the version and does not send the caller looking at a ciphertext
    // (there is none in an export).
    assert!(
        s.message().contains("no version 9") && !s.message().contains("ciphertext"),
        "{}",
        s.message()
    );

    // The CLI: refused by the server → exit 1, one clear line, no file.
    let rfile = inst.root.path().join("r.pem");
    std::fs::write(&rfile, &pem).unwrap();
    let out_file = inst.root.path().join("never.bin");
    let out = server.cli(&[
        "key",
        "export",
        "plain/k",
        "--recipient",
        &p(&rfile),
        "--out",
        &p(&out_file),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not exportable"));
    assert!(!out_file.exists());

    let recs = records(&inst);
    assert_audited(&recs, "export-key", "plain/k", "FAILED_PRECONDITION");
    assert_audited(&recs, "export-key", "plain/k", "PERMISSION_DENIED");
    assert_audited(&recs, "export-key", "plain/exportable", "OK");
    let admin_refused = recs.iter().any(|r| {
        r["operation"] == "export-key"
            && r["principal"] == "spiffe://kms.dev/admin"
            && r["code"] == "FAILED_PRECONDITION"
    });
    assert!(
        admin_refused,
        "the administrator's refused export is not audited"
    );
}

/// Refused imports store nothing and are audited: an unknown token, a token issued for
/// another name (not consumed: it then works for its own name), a blob of the wrong length
/// (not consumed either), a blob that does not open (consumed: a retry with a good blob is
/// refused, so the wrapping key never answers twice), material of 16 and 33 bytes, a token
/// used once already, and material equal to an existing version. Each is INVALID_ARGUMENT with
/// a message that says what is wrong; the CLI refuses a 31-byte material file locally (exit 2,
/// nothing sent) and reports a server refusal with exit 1.
/// [RègleInjectionClé: injection keeps integrity and authenticity; SNC 12.6: failures logged]
#[tokio::test]
async fn refused_imports_store_nothing_and_are_audited() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let good = [0x5au8; 32];
    let not_found = |r: Result<pb::Key, tonic::Status>, name: &str| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{name} exists: {}", s.message());
    };

    // Unknown token.
    let prm = params(&c, "imp/unknown").await.unwrap();
    let s = import(
        &c,
        import_req("imp/unknown", "not-a-token", wrap_to(&prm, &good)),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("token is unknown"), "{}", s.message());
    // Well formed (32 hex digits) but never issued.
    let s = import(
        &c,
        import_req(
            "imp/unknown",
            "0123456789abcdef0123456789abcdef",
            wrap_to(&prm, &good),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("token is unknown"), "{}", s.message());
    not_found(get(&c, "imp/unknown").await, "imp/unknown");

    // A token issued for another name: refused, and not consumed.
    let prm_a = params(&c, "imp/a").await.unwrap();
    let s = import(
        &c,
        import_req("imp/b", &prm_a.import_token, wrap_to(&prm_a, &good)),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().contains("issued for another key"),
        "{}",
        s.message()
    );
    not_found(get(&c, "imp/b").await, "imp/b");
    not_found(get(&c, "imp/a").await, "imp/a");

    // A blob of the wrong shape: refused before decrypting, token not consumed.
    for len in [0usize, 100, 384 + 41] {
        let s = import(&c, import_req("imp/a", &prm_a.import_token, vec![7u8; len]))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{len}: {}", s.message());
        if len > 0 {
            assert!(s.message().contains("bytes"), "{len}: {}", s.message());
        }
    }
    not_found(get(&c, "imp/a").await, "imp/a");
    let k = import(
        &c,
        import_req("imp/a", &prm_a.import_token, wrap_to(&prm_a, &good)),
    )
    .await
    .unwrap();
    assert_eq!(k.latest_version, 1);

    // Reuse of a token that succeeded.
    let before = get(&c, "imp/a").await.unwrap();
    let s = import(
        &c,
        import_req("imp/a", &prm_a.import_token, wrap_to(&prm_a, &[0x6bu8; 32])),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("already used"), "{}", s.message());
    // Not even spelt in capitals.
    let s = import(
        &c,
        import_req(
            "imp/a",
            &prm_a.import_token.to_ascii_uppercase(),
            wrap_to(&prm_a, &[0x6cu8; 32]),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert_eq!(get(&c, "imp/a").await.unwrap().versions, before.versions);

    // Material equal to an existing version.
    let s = import_material(&c, "imp/a", &good, false)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert_eq!(get(&c, "imp/a").await.unwrap().versions, before.versions);

    // A corrupted wrap: the one opaque message; the token is spent, even for a good retry.
    let prm_c = params(&c, "imp/corrupt").await.unwrap();
    // A changed byte in the RSA part and in the AES-KWP part give the same answer.
    for i in [10usize, 400] {
        let prm_i = params(&c, "imp/corrupt").await.unwrap();
        let mut bad_i = wrap_to(&prm_i, &good);
        bad_i[i] ^= 1;
        let s = import(&c, import_req("imp/corrupt", &prm_i.import_token, bad_i))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "byte {i}: {}", s.message());
        assert!(s.message().contains("does not open"), "{}", s.message());
    }
    let mut bad = wrap_to(&prm_c, &good);
    bad[5] ^= 0x80;
    let first = import(&c, import_req("imp/corrupt", &prm_c.import_token, bad))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::InvalidArgument);
    let retry = import(
        &c,
        import_req("imp/corrupt", &prm_c.import_token, wrap_to(&prm_c, &good)),
    )
    .await
    .unwrap_err();
    assert_eq!(retry.code(), Code::InvalidArgument, "{}", retry.message());
    assert!(
        retry.message().contains("already used"),
        "{}",
        retry.message()
    );
    not_found(get(&c, "imp/corrupt").await, "imp/corrupt");

    // Wrong material lengths, wrapped correctly.
    for len in [16usize, 33] {
        let prm = params(&c, "imp/length").await.unwrap();
        let s = import(
            &c,
            import_req(
                "imp/length",
                &prm.import_token,
                wrap_to(&prm, &vec![3u8; len]),
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{len}: {}", s.message());
        assert!(
            s.message().contains(&format!("{len} bytes")) && s.message().contains("32"),
            "{len}: {}",
            s.message()
        );
    }
    not_found(get(&c, "imp/length").await, "imp/length");

    // The CLI: a 31-byte material file is refused locally (exit 2), nothing sent.
    let short = inst.root.path().join("short.bin");
    std::fs::write(&short, [1u8; 31]).unwrap();
    let out = server.cli(&["key", "import", "imp/cli", "--material", &p(&short)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("32"), "{err}");
    // A refusal by the server: exit 1.
    let blob = inst.root.path().join("blob.bin");
    std::fs::write(&blob, wrap_to(&prm_c, &good)).unwrap();
    let out = server.cli(&[
        "key",
        "import",
        "imp/cli",
        "--token",
        "bogus-token",
        "--wrapped",
        &p(&blob),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("token is unknown"));
    not_found(get(&c, "imp/cli").await, "imp/cli");
    // And the CLI's --material path works for 32 bytes (wrapped locally).
    let full = inst.root.path().join("full.bin");
    std::fs::write(&full, [0x77u8; 32]).unwrap();
    cli_ok(&server.cli(&["key", "import", "imp/cli-ok", "--material", &p(&full)]));
    assert_kms_holds(&c, "imp/cli-ok", &[0x77u8; 32]).await;

    let recs = records(&inst);
    for name in [
        "imp/unknown",
        "imp/b",
        "imp/a",
        "imp/corrupt",
        "imp/length",
        "imp/cli",
    ] {
        assert_audited(&recs, "import-key-material", name, "INVALID_ARGUMENT");
    }
    assert_audited(&recs, "import-key-material", "imp/a", "OK");
    assert_audited(&recs, "get-import-parameters", "imp/a", "OK");
    // Nothing was sent for the 31-byte file: the only imp/cli records are the bogus token's.
    assert!(
        !recs
            .iter()
            .any(|r| r["key"] == "imp/cli" && r["operation"] == "get-import-parameters"),
        "the CLI asked the server for import parameters despite a bad material file"
    );
}

/// An import token expires: with a 1-second lifetime, an import after the expiry is refused
/// ("expired"), nothing is stored, and the refusal is audited. [RègleInjectionClé]
#[tokio::test]
async fn expired_import_token_is_refused() {
    let inst = Installation::with_config("[keys]\nimport_token_ttl_secs = 1\n");
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let prm = params(&c, "imp/expiring").await.unwrap();
    assert!(
        prm.expires_unix - now_unix() <= 2,
        "expires_unix {} for a 1 s lifetime",
        prm.expires_unix
    );
    let wrapped = wrap_to(&prm, &[9u8; 32]);
    // Past the expiry whatever the rounding (a sleep that only makes the test stricter).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let s = import(&c, import_req("imp/expiring", &prm.import_token, wrapped))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("expired"), "{}", s.message());
    let s = get(&c, "imp/expiring").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert_audited(
        &records(&inst),
        "import-key-material",
        "imp/expiring",
        "INVALID_ARGUMENT",
    );
}

/// A destroyed imported key comes back only with its own material: after the scheduled
/// destruction its ciphertexts do not decrypt; importing different material is refused
/// (FAILED_PRECONDITION) and the key stays destroyed; importing the same material restores it
/// and the old ciphertext decrypts again. [RègleEffacement-1: erasure is real (nothing to
/// decrypt with until the owner brings the material back); RègleInjectionClé]
#[tokio::test]
async fn destroyed_imported_key_is_restored_only_with_its_material() {
    let inst = Installation::with_config(FAST_LIFECYCLE);
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let name = "restore/k";
    let m = [0x42u8; 32];
    let other = [0x43u8; 32];
    import_material(&c, name, &m, false).await.unwrap();
    let aad = ctx(&[("t", "restore")]);
    let ct = c
        .encrypt(name, b"before destruction".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;

    c.call(
        c.key_admin()
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                name: name.into(),
                waiting_period_days: Some(0),
            }),
    )
    .await
    .unwrap();
    // Bounded wait for the scheduler (every second here); no fixed sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let k = get(&c, name).await.unwrap();
        if k.state == pb::KeyState::Destroyed as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not destroyed within 30 s: {k:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let s = status(c.decrypt(ct.clone(), aad.clone()).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());

    let s = import_material(&c, name, &other, false).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("destroyed"), "{}", s.message());
    let k = get(&c, name).await.unwrap();
    assert_eq!(k.state, pb::KeyState::Destroyed as i32);
    assert!(
        k.versions
            .iter()
            .all(|v| v.state == pb::VersionState::Destroyed as i32)
    );
    let s = status(c.decrypt(ct.clone(), aad.clone()).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition);

    let k = import_material(&c, name, &m, false).await.unwrap();
    assert_eq!(k.state, pb::KeyState::Enabled as i32, "{k:?}");
    assert_eq!(k.latest_version, 1);
    assert_ne!(k.versions[0].state, pb::VersionState::Destroyed as i32);
    let back = c.decrypt(ct, aad).await.unwrap();
    assert_eq!(back.plaintext, b"before destruction");
    assert_kms_holds(&c, name, &m).await;
    let recs = records(&inst);
    assert_audited(&recs, "import-key-material", name, "FAILED_PRECONDITION");
    assert_audited(&recs, "import-key-material", name, "OK");
}

/// An imported key gets new versions only by import: a second import is version 2 (the
/// latest; version 1 still decrypts), RotateKey and a rotation period are refused, key
/// settings given again for an existing key are refused; a disabled or pending-deletion
/// imported key takes no import; a KMS-generated key takes none either (not even through a
/// token fetched before the name was created). [RègleInjectionClé; RègleGénérationCentralisée-1:
/// a KMS key's material only ever comes from the KMS]
#[tokio::test]
async fn imported_keys_get_versions_only_by_import() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let name = "ver/k";
    let (m1, m2) = ([1u8; 32], [2u8; 32]);
    import_material(&c, name, &m1, false).await.unwrap();
    let aad = ctx(&[]);
    let ct1 = c
        .encrypt(name, b"one".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;
    let k = import_material(&c, name, &m2, false).await.unwrap();
    assert_eq!(k.latest_version, 2);
    assert_eq!(k.origin, pb::KeyOrigin::External as i32);
    assert_kms_holds(&c, name, &m2).await;
    assert_eq!(
        c.decrypt(ct1.clone(), aad.clone()).await.unwrap().plaintext,
        b"one"
    );

    let s = status(
        c.call(
            c.key_admin()
                .rotate_key(pb::RotateKeyRequest { name: name.into() }),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    let r = c
        .call(c.key_admin().update_key_config(pb::UpdateKeyConfigRequest {
            name: name.into(),
            rotation_period_seconds: Some(86_400),
            ..Default::default()
        }))
        .await;
    let s = status(r.unwrap_err());
    assert!(
        matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument),
        "{s:?}"
    );
    let k = get(&c, name).await.unwrap();
    assert_eq!((k.latest_version, k.rotation_period_seconds), (2, 0));

    // Settings of a new key given for an existing one.
    for (what, f) in [
        (
            "description",
            Box::new(|r: &mut pb::ImportKeyMaterialRequest| r.description = "x".into())
                as Box<dyn Fn(&mut pb::ImportKeyMaterialRequest)>,
        ),
        (
            "labels",
            Box::new(|r: &mut pb::ImportKeyMaterialRequest| r.labels = ctx(&[("a", "b")])),
        ),
        (
            "exportable",
            Box::new(|r: &mut pb::ImportKeyMaterialRequest| r.exportable = true),
        ),
    ] {
        let prm = params(&c, name).await.unwrap();
        let mut req = import_req(name, &prm.import_token, wrap_to(&prm, &[9u8; 32]));
        f(&mut req);
        let s = import(&c, req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
    }
    let k = get(&c, name).await.unwrap();
    assert_eq!((k.latest_version, k.exportable), (2, false));

    // Disabled, then pending deletion: no import.
    let prm = params(&c, name).await.unwrap();
    c.call(
        c.key_admin()
            .disable_key(pb::KeyNameRequest { name: name.into() }),
    )
    .await
    .unwrap();
    let s = import(
        &c,
        import_req(name, &prm.import_token, wrap_to(&prm, &[3u8; 32])),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    c.call(
        c.key_admin()
            .enable_key(pb::KeyNameRequest { name: name.into() }),
    )
    .await
    .unwrap();
    let prm = params(&c, name).await.unwrap();
    c.call(
        c.key_admin()
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                name: name.into(),
                waiting_period_days: Some(30),
            }),
    )
    .await
    .unwrap();
    let s = import(
        &c,
        import_req(name, &prm.import_token, wrap_to(&prm, &[3u8; 32])),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert_eq!(get(&c, name).await.unwrap().latest_version, 2);

    // A KMS-generated key: no import parameters, and no import with an earlier token.
    create(&c, "ver/kms", false).await;
    let s = params(&c, "ver/kms").await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    let prm = params(&c, "ver/race").await.unwrap();
    create(&c, "ver/race", false).await;
    let s = import(
        &c,
        import_req("ver/race", &prm.import_token, wrap_to(&prm, &[4u8; 32])),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    let k = get(&c, "ver/race").await.unwrap();
    assert_eq!((k.latest_version, k.origin), (1, pb::KeyOrigin::Kms as i32));
    // RotateKey still works on a KMS key (the refusal above is about origin).
    c.call(c.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "ver/kms".into(),
    }))
    .await
    .unwrap();
}

/// GenerateDataKey with a recipient: `recipient_wrapped` opens (RSA with our own wrapping key
/// pair, age with an identity) to exactly the data key the response gives in clear and the
/// ciphertext decrypts to, also when the plaintext is not returned. The CLI's `datakey
/// --recipient --recipient-out` writes the same. [RègleAcheminementCléCentral-1]
#[tokio::test]
async fn data_key_for_a_recipient() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "dk/k", false).await;
    let wk = WrappingKey::generate().unwrap();
    let pem = wk.public_pem().unwrap();
    let aad = ctx(&[("t", "dk")]);

    let r = c
        .call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "dk/k".into(),
            context: aad.clone(),
            recipient: rsa_recipient(&pem),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(r.plaintext.len(), 32);
    assert_eq!(
        r.recipient_format,
        pb::WrapFormat::RsaOaepSha256AesKwp as i32
    );
    assert_eq!(r.recipient_wrapped.len(), 384 + 40);
    assert_eq!(
        wk.unwrap(&r.recipient_wrapped).unwrap().expose().as_slice(),
        r.plaintext.as_slice()
    );
    assert_eq!(
        c.decrypt(r.ciphertext.clone(), aad.clone())
            .await
            .unwrap()
            .plaintext,
        r.plaintext
    );

    // Without the plaintext: the recipient's copy still opens to what the ciphertext holds.
    let r = c
        .call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "dk/k".into(),
            context: aad.clone(),
            without_plaintext: true,
            recipient: rsa_recipient(&pem),
        }))
        .await
        .unwrap();
    assert!(r.plaintext.is_empty());
    let dk = c
        .decrypt(r.ciphertext.clone(), aad.clone())
        .await
        .unwrap()
        .plaintext;
    assert_eq!(
        wk.unwrap(&r.recipient_wrapped).unwrap().expose().as_slice(),
        dk.as_slice()
    );

    // An age recipient.
    let id = age::x25519::Identity::generate();
    let r = c
        .call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "dk/k".into(),
            context: aad.clone(),
            recipient: age_recipient(&id.to_public().to_string()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(r.recipient_format, pb::WrapFormat::Age as i32);
    assert_eq!(
        age::decrypt(&id, &r.recipient_wrapped).unwrap(),
        r.plaintext
    );

    // No recipient: nothing wrapped to one.
    let r = c.generate_data_key("dk/k", aad.clone()).await.unwrap();
    assert!(r.recipient_wrapped.is_empty());
    // A recipient that is not a usable key: refused.
    let s = status(
        c.call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "dk/k".into(),
            recipient: rsa_recipient("garbage"),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());

    // The CLI.
    let rfile = inst.root.path().join("dk-recipient.pem");
    std::fs::write(&rfile, &pem).unwrap();
    let rout = inst.root.path().join("dk.wrapped");
    let v = cli_json(&server.cli(&[
        "--format",
        "json",
        "datakey",
        "--key",
        "dk/k",
        "--recipient",
        &p(&rfile),
        "--recipient-out",
        &p(&rout),
    ]));
    let plain = b64_decode(v["plaintext_base64"].as_str().unwrap()).unwrap();
    let wrapped = std::fs::read(&rout).unwrap();
    assert_eq!(
        wk.unwrap(&wrapped).unwrap().expose().as_slice(),
        plain.as_slice()
    );
}

/// A rule granting `export` with `mfa = true`: ExportKey without a TOTP code is refused
/// (PERMISSION_DENIED, "second factor"), with a valid code it is allowed.
/// [SNC 9.6: strong multi-factor authentication for administration;
///  RègleAcheminementCléCentral-1]
#[tokio::test]
async fn export_under_an_mfa_rule_needs_a_totp_code() {
    let inst = Installation::new();
    std::fs::write(
        inst.policies_dir().join("mfa-export.toml"),
        r#"
[[rule]]
id = "other-export-with-mfa"
effect = "allow"
principals = ["spiffe://kms.test/other"]
operations = ["export"]
keys = ["mfa/**"]
mfa = true
"#,
    )
    .unwrap();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "mfa/exportable", true).await;
    let other = server.client_as(&inst.pki, "other").await;
    let wk = WrappingKey::generate().unwrap();
    let pem = wk.public_pem().unwrap();

    let s = export(&other, "mfa/exportable", 0, rsa_recipient(&pem))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
    assert!(s.message().contains("second factor"), "{}", s.message());

    let enrolled = other
        .call(other.mfa().enroll(pb::EnrollMfaRequest {}))
        .await
        .unwrap();
    let secret = base32_decode(&enrolled.secret_base32);
    let code = format!(
        "{:06}",
        kms_core::totp::code_at(&secret, now_unix() as u64, 6)
    );
    let r = export(
        &other.with_totp(&code).unwrap(),
        "mfa/exportable",
        0,
        rsa_recipient(&pem),
    )
    .await
    .unwrap();
    assert_eq!(wk.unwrap(&r.wrapped_material).unwrap().expose().len(), 32);
    let recs = records(&inst);
    assert_audited(&recs, "export-key", "mfa/exportable", "PERMISSION_DENIED");
    assert_audited(&recs, "export-key", "mfa/exportable", "OK");
}

/// Every form in which `secret` could be written to a log: raw, hex (both cases), base64
/// standard and URL-safe (whole, and from each of the three alignments, without the last
/// group whose padding-free tail differs when the secret is cut), and Rust's `{:?}` of it.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        format!("{secret:?}")
            .trim_end_matches(']')
            .as_bytes()
            .to_vec(),
    ];
    for skip in 0..3.min(secret.len()) {
        let std = b64_encode(&secret[skip..]);
        let url = std.replace('+', "-").replace('/', "_");
        for s in [std, url] {
            if s.len() > 12 {
                out.push(s.as_bytes()[..s.len() - 4].to_vec());
            }
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 without padding (no crate: enough to search for the encoded form).
fn b64_encode(b: &[u8]) -> String {
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    s
}

/// Standard base64 (padding optional), as kms-cli's JSON output carries bytes.
fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    let (mut buf, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.trim().trim_end_matches('=').bytes() {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .ok_or_else(|| format!("not base64: {s}"))? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Ok(out)
}

fn assert_absent(haystack: &[u8], file: &str, what: &str, secret: &[u8]) {
    for needle in forms(secret) {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{what} ({}) found in {file}",
            String::from_utf8_lossy(&needle)
        );
    }
}

/// Imports (openssl-wrapped with a known KEK, and a refused one), exports (to openssl and age
/// recipients) and a data key to a recipient, run at debug level: neither the material, the
/// KEKs, the data key, the import tokens nor the wrapped blobs appear in the server log or the
/// audit log, raw, hex, base64 (standard or URL-safe) or debug-printed; the calls themselves
/// are audited. [SNC 12.6–12.8: no secret in logs; RègleAcheminementCléCentral-1]
#[tokio::test]
async fn no_key_material_token_or_wrap_in_logs() {
    let inst = Installation::new();
    let server = inst.start_debug_json();
    let shares = init(&server, 1, 1).await;
    unseal_with(&server, &shares, &[1]).await;
    let c = server.client().await;
    let dir = inst.root.path();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();

    // An openssl import with a known KEK.
    let prm = params(&c, "logs/imported").await.unwrap();
    let public = dir.join("wrapping.pem");
    std::fs::write(&public, &prm.wrapping_public_key_pem).unwrap();
    let material = dir.join("material.bin");
    let kek = dir.join("kek.bin");
    openssl(&["rand", "-out", &p(&material), "32"]);
    openssl(&["rand", "-out", &p(&kek), "32"]);
    let wrapped = dir.join("wrapped.bin");
    openssl_wrap(dir, &public, &kek, &material, &wrapped);
    let blob = std::fs::read(&wrapped).unwrap();
    let mut req = import_req("logs/imported", &prm.import_token, blob.clone());
    req.exportable = true;
    import(&c, req).await.unwrap();
    let m = std::fs::read(&material).unwrap();
    secrets.push(("imported material".into(), m.clone()));
    secrets.push(("import KEK".into(), std::fs::read(&kek).unwrap()));
    secrets.push(("import token".into(), prm.import_token.clone().into_bytes()));
    secrets.push(("wrapped import".into(), blob[..48].to_vec()));
    secrets.push(("wrapped import (KWP)".into(), blob[384..].to_vec()));

    // A refused import: its token and blob are not logged either.
    let prm2 = params(&c, "logs/refused").await.unwrap();
    let mut bad = wrap_to(&prm2, &[0xa5u8; 32]);
    bad[390] ^= 1;
    secrets.push((
        "refused token".into(),
        prm2.import_token.clone().into_bytes(),
    ));
    secrets.push(("refused blob".into(), bad[..48].to_vec()));
    secrets.push(("refused material".into(), vec![0xa5u8; 32]));
    let refused = import(&c, import_req("logs/refused", &prm2.import_token, bad))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // An unknown token that looks like a real one (it is echoed nowhere).
    let fake = format!("{}x", prm2.import_token);
    let s = import(&c, import_req("logs/refused", &fake, vec![0u8; 424]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);

    // Exports: to openssl (the KEK recovered) and to age.
    let (private, partner) = openssl_rsa(dir, "partner", 3072);
    let partner_pem = std::fs::read_to_string(&partner).unwrap();
    let r = export(&c, "logs/imported", 0, rsa_recipient(&partner_pem))
        .await
        .unwrap();
    let (export_kek, exported) = openssl_unwrap(dir, &private, &r.wrapped_material);
    assert_eq!(exported, m);
    secrets.push(("export KEK".into(), export_kek));
    secrets.push(("export blob".into(), r.wrapped_material[..48].to_vec()));
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: "logs/kms".into(),
        exportable: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let id = age::x25519::Identity::generate();
    let r = export(
        &c,
        "logs/kms",
        0,
        age_recipient(&id.to_public().to_string()),
    )
    .await
    .unwrap();
    let kms_material = age::decrypt(&id, &r.wrapped_material).unwrap();
    secrets.push(("KMS material".into(), kms_material));
    secrets.push(("age export".into(), r.wrapped_material[..48].to_vec()));

    // A data key to a recipient.
    let wk = WrappingKey::generate().unwrap();
    let dk = c
        .call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "logs/kms".into(),
            recipient: rsa_recipient(&wk.public_pem().unwrap()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        wk.unwrap(&dk.recipient_wrapped)
            .unwrap()
            .expose()
            .as_slice(),
        dk.plaintext.as_slice()
    );
    secrets.push(("data key".into(), dk.plaintext.clone()));
    secrets.push((
        "data key to recipient".into(),
        dk.recipient_wrapped[..48].to_vec(),
    ));
    drop(c);
    assert!(server.terminate());

    let recs = records(&inst);
    assert_audited(&recs, "get-import-parameters", "logs/imported", "OK");
    assert_audited(&recs, "import-key-material", "logs/imported", "OK");
    assert_audited(
        &recs,
        "import-key-material",
        "logs/refused",
        "INVALID_ARGUMENT",
    );
    assert_audited(&recs, "export-key", "logs/imported", "OK");
    assert_audited(&recs, "export-key", "logs/kms", "OK");
    assert_audited(&recs, "generate-data-key", "logs/kms", "OK");

    let log = std::fs::read(dir.join("server.log")).unwrap();
    // The run was logged at debug level (so the absence below means something).
    assert!(
        log.split(|b| *b == b'\n').count() > 20,
        "only {} log lines",
        log.split(|b| *b == b'\n').count()
    );
    let audit = std::fs::read(dir.join("audit.log")).unwrap();
    // The search finds what is there (the key names are), so a miss below is an absence.
    for (file, text) in [("the server log", &log), ("the audit log", &audit)] {
        assert!(
            text.windows(13).any(|w| w == b"logs/imported"),
            "no key name in {file}"
        );
    }
    for (what, s) in &secrets {
        assert_absent(&log, "the server log", what, s);
        assert_absent(&audit, "the audit log", what, s);
    }
}
