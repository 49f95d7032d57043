//! The Python client (`clients/python`, package `kms_client`) against the real server over
//! mTLS: what it encrypts `kms-cli` decrypts and the reverse, data keys, re-encryption, and
//! refusals that carry the gRPC status code's name and the server's message.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` installs them); without them
//! every test here fails and says how to install them. The stubs are generated from `proto/`
//! by the package itself on first use (never committed).

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use kms_tests::{Installation, Server, cli_json, start_unsealed};

const INSTALL: &str = "python3 -m pip install grpcio==1.85.1 grpcio-tools==1.85.1";

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// Checks once per test binary that `grpc` and `grpc_tools` import, then generates the stubs
/// (so the tests do not all generate them at once). Panics with how to install them.
fn prepare() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}): install Python 3, then {INSTALL}")
            });
        assert!(
            out.status.success(),
            "the Python client's tests need grpcio and grpcio-tools, which python3 cannot \
             import:\n{}\ninstall them with: {INSTALL} (CI's .ci/run does)",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("python3")
            .arg(python_dir().join("generate.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "generate.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `python3 ARGS` connected to `server` as the PKI's client `cert` (the variables
/// `kms-cli` reads), with `stdin` as standard input.
fn python(inst: &Installation, server: &Server, cert: &str, args: &[&str], stdin: &[u8]) -> Output {
    prepare();
    let files = inst.pki.client(cert);
    let mut child = Command::new("python3")
        .args(args)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KMS_ADDR", &server.addr)
        .env("KMS_CA_CERT", inst.pki.ca())
        .env("KMS_CLIENT_CERT", &files.cert)
        .env("KMS_CLIENT_KEY", &files.key)
        .env("KMS_TLS_SERVER_NAME", "localhost")
        // Only 127.0.0.1: no proxy from the environment in between.
        .env_remove("grpc_proxy")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `python3 -m kms_client ARGS` (the package's command line) as the test operator.
fn py_cli(inst: &Installation, server: &Server, args: &[&str], stdin: &[u8]) -> Output {
    let mut all = vec!["-m", "kms_client"];
    all.extend_from_slice(args);
    python(inst, server, "client", &all, stdin)
}

/// Runs a Python program using the `KmsClient` API as the client `cert`; returns the JSON
/// it prints. The program gets `kms` (connected from the environment) and `out(obj)`.
fn py_api(inst: &Installation, server: &Server, cert: &str, body: &str) -> serde_json::Value {
    let program = format!(
        "import base64, json, sys\nfrom kms_client import *\n\
         def out(obj):\n    print(json.dumps(obj))\n\
         with KmsClient.from_env() as kms:\n{}\n",
        body.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = python(inst, server, cert, &["-c", &program], b"");
    assert!(
        out.status.success(),
        "python failed ({:?}):\n{}\n--- program:\n{program}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok(out: &Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

async fn server_with_key(key: &str) -> (Installation, Server) {
    let inst = Installation::new();
    let server = start_unsealed(&inst, &mut None).await;
    let k = cli_json(&server.cli(&["--format", "json", "key", "create", key]));
    assert_eq!(k["name"], key);
    (inst, server)
}

/// Encrypted in Python, decrypted by `kms-cli`, and the reverse, with an encryption context;
/// after a rotation Python re-encrypts a `kms-cli` ciphertext to the new version, which
/// `kms-cli` decrypts. All over mTLS 1.3 with the test PKI's client certificate.
#[tokio::test]
async fn python_and_kms_cli_decrypt_each_others_ciphertexts() {
    let (inst, server) = server_with_key("py/app").await;

    // Python → kms-cli, bytes that are not UTF-8 included.
    let secret: &[u8] = b"from python \x00\xff\xfe \xf0\x9f\x94\x90 end";
    let b64 = ok(
        &py_cli(
            &inst,
            &server,
            &["encrypt", "--key", "py/app", "--context", "tenant=acme"],
            secret,
        ),
        "python encrypt",
    );
    let b64 = String::from_utf8(b64).unwrap();
    assert_eq!(b64.lines().count(), 1, "one base64 line: {b64}");
    let plain = ok(
        &server.cli_with_stdin(&["decrypt", "--context", "tenant=acme"], &b64),
        "kms-cli decrypt",
    );
    assert_eq!(plain, secret);
    // The context is bound: kms-cli without it is refused.
    let out = server.cli_with_stdin(&["decrypt"], &b64);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ciphertext authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kms-cli → Python, through the command line and through the API.
    let text = "from rust \u{1F510}\nsecond line";
    let b64 = String::from_utf8(ok(
        &server.cli_with_stdin(
            &["encrypt", "--key", "py/app", "--context", "tenant=acme"],
            text,
        ),
        "kms-cli encrypt",
    ))
    .unwrap();
    let plain = ok(
        &py_cli(
            &inst,
            &server,
            &["decrypt", "--context", "tenant=acme"],
            b64.as_bytes(),
        ),
        "python decrypt",
    );
    assert_eq!(plain, text.as_bytes());
    let v = py_api(
        &inst,
        &server,
        "client",
        &format!(
            "r = kms.decrypt(base64.b64decode({:?}), {{'tenant': 'acme'}})\n\
             out({{'plaintext': r.plaintext.decode(), 'key': r.key, 'version': r.version, \
             'repr': repr(r)}})",
            b64.trim()
        ),
    );
    assert_eq!(v["plaintext"], text);
    assert_eq!(v["key"], "py/app");
    assert_eq!(v["version"], 1);
    assert!(
        !v["repr"].as_str().unwrap().contains("from rust"),
        "the plaintext is kept out of repr: {}",
        v["repr"]
    );

    // Rotate, then Python moves the kms-cli ciphertext to version 2; kms-cli decrypts that.
    ok(
        &server.cli(&["key", "rotate", "py/app"]),
        "kms-cli key rotate",
    );
    let v = py_api(
        &inst,
        &server,
        "client",
        &format!(
            "r = kms.reencrypt(base64.b64decode({:?}), {{'tenant': 'acme'}})\n\
             out({{'ct': base64.b64encode(r.ciphertext).decode(), 'source_version': \
             r.source_version, 'key': r.key, 'version': r.version}})",
            b64.trim()
        ),
    );
    assert_eq!(v["source_version"], 1);
    assert_eq!(v["version"], 2);
    assert_eq!(v["key"], "py/app");
    let plain = ok(
        &server.cli_with_stdin(
            &["decrypt", "--context", "tenant=acme"],
            v["ct"].as_str().unwrap(),
        ),
        "kms-cli decrypt of the re-encrypted ciphertext",
    );
    assert_eq!(plain, text.as_bytes());
}

/// GenerateDataKey from Python: a 32-byte key (AES-256) whose wrapped form `kms-cli decrypt`
/// unwraps to the same bytes, and which `repr` never shows. [RègleCléSym]
#[tokio::test]
async fn python_data_key_is_unwrapped_by_kms_cli() {
    let (inst, server) = server_with_key("py/backup").await;
    let doc: serde_json::Value = serde_json::from_slice(&ok(
        &py_cli(
            &inst,
            &server,
            &[
                "generate-data-key",
                "--key",
                "py/backup",
                "--context",
                "purpose=backup",
            ],
            b"",
        ),
        "python generate-data-key",
    ))
    .unwrap();
    assert_eq!(doc["key"], "py/backup");
    assert_eq!(doc["version"], 1);
    let plain_b64 = doc["plaintext_base64"].as_str().unwrap();
    let unwrapped = ok(
        &server.cli_with_stdin(
            &["decrypt", "--context", "purpose=backup"],
            doc["ciphertext_base64"].as_str().unwrap(),
        ),
        "kms-cli decrypt of the data key",
    );
    assert_eq!(unwrapped.len(), 32);
    let v = py_api(
        &inst,
        &server,
        "client",
        &format!(
            "same = base64.b64decode({plain_b64:?}) == bytes.fromhex({:?})\n\
             dk = kms.generate_data_key('py/backup')\n\
             out({{'same': same, 'len': len(dk.plaintext), \
             'hidden': dk.plaintext.hex() not in repr(dk) and str(dk.plaintext) not in repr(dk), \
             'unwrapped': kms.decrypt(dk.ciphertext).plaintext == dk.plaintext}})",
            hex::encode(&unwrapped)
        ),
    );
    assert_eq!(
        v["same"], true,
        "kms-cli unwrapped the key Python was given"
    );
    assert_eq!(v["len"], 32);
    assert_eq!(v["hidden"], true, "repr(DataKey) shows the clear key");
    assert_eq!(v["unwrapped"], true);
}

/// Refusals reach Python as `KmsError` with the gRPC status code's name and the server's
/// message: a missing key (`NOT_FOUND`), a wrong context (`INVALID_ARGUMENT`), a principal no
/// rule allows (`PERMISSION_DENIED`, deny by default [SNC 9.2]); on the command line they are
/// one `CODE: message` line on stderr and exit code 1, and uncaught they end the traceback.
#[tokio::test]
async fn python_errors_carry_the_status_code_and_message() {
    let (inst, server) = server_with_key("py/app").await;

    let out = py_cli(&inst, &server, &["encrypt", "--key", "py/missing"], b"x");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("kms_client: NOT_FOUND: "), "{stderr}");
    assert!(stderr.contains("py/missing"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let v = py_api(
        &inst,
        &server,
        "client",
        "def err(f):\n    \
             try:\n        f()\n    \
             except KmsError as e:\n        return {'code': e.code, 'message': e.message, 'str': str(e)}\n    \
             return None\n\
         ct = kms.encrypt('py/app', b'hello', {'tenant': 'a'}).ciphertext\n\
         out({'missing': err(lambda: kms.encrypt('py/missing', b'x')),\n     \
              'context': err(lambda: kms.decrypt(ct, {'tenant': 'b'})),\n     \
              'dk': err(lambda: kms.generate_data_key('py/missing'))})",
    );
    assert_eq!(v["missing"]["code"], "NOT_FOUND", "{v}");
    assert!(
        v["missing"]["message"]
            .as_str()
            .unwrap()
            .contains("py/missing"),
        "{v}"
    );
    assert_eq!(
        v["missing"]["str"].as_str().unwrap(),
        format!("NOT_FOUND: {}", v["missing"]["message"].as_str().unwrap())
    );
    assert_eq!(v["context"]["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(
        v["context"]["message"], "ciphertext authentication failed",
        "{v}"
    );
    assert_eq!(v["dk"]["code"], "NOT_FOUND", "{v}");

    // `other` has no rule: denied, naming the principal.
    let v = py_api(
        &inst,
        &server,
        "other",
        "try:\n    kms.encrypt('py/app', b'x')\n    out(None)\n\
         except KmsError as e:\n    out({'code': e.code, 'message': e.message})",
    );
    assert_eq!(v["code"], "PERMISSION_DENIED", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("spiffe://kms.test/other"),
        "{v}"
    );

    // Uncaught, the exception's last traceback line names the code and the message.
    let out = python(
        &inst,
        &server,
        "client",
        &[
            "-c",
            "from kms_client import KmsClient\nKmsClient.from_env().encrypt('py/missing', b'x')",
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kms_client.client.KmsError: NOT_FOUND: ") && last.contains("py/missing"),
        "{stderr}"
    );
}

/// The Python client verifies the server's certificate: with a name the certificate does not
/// hold it never connects (`KmsConnectError`, code `UNAVAILABLE`) and sends nothing.
/// [SNC 10.2.c]
#[tokio::test]
async fn python_client_refuses_a_server_certificate_for_another_name() {
    let (inst, server) = server_with_key("py/app").await;
    let v = py_api(&inst, &server, "client", "out(repr(kms))");
    assert!(v.as_str().unwrap().contains("127.0.0.1"), "{v}");
    let program = "import os, json\nfrom kms_client import KmsClient, KmsConnectError\n\
        try:\n    KmsClient(os.environ['KMS_ADDR'], os.environ['KMS_CA_CERT'], \
        os.environ['KMS_CLIENT_CERT'], os.environ['KMS_CLIENT_KEY'], \
        server_name='not-the-server.example', connect_timeout=2)\n    print('null')\n\
        except KmsConnectError as e:\n    print(json.dumps({'code': e.code, 'message': e.message}))";
    let v: serde_json::Value = serde_json::from_slice(&ok(
        &python(&inst, &server, "client", &["-c", program], b""),
        "python",
    ))
    .unwrap();
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no connection to"),
        "{v}"
    );
}

/// A client certificate listed in the server's CRL gets no service from Python either: the
/// handshake is refused, and the client raises `KmsError` with code `UNAVAILABLE` (from the
/// constructor or the first call, whichever sees the refusal), never an answer.
/// [SNC 10.2.c: revoked certificates refused]
#[tokio::test]
async fn python_client_with_a_revoked_certificate_gets_no_answer() {
    let (inst, server) = server_with_key("py/app").await;
    let program = "import os, json\nfrom kms_client import KmsClient, KmsError\n\
        try:\n    kms = KmsClient.from_env(connect_timeout=3)\n    \
        kms.encrypt('py/app', b'x')\n    print('null')\n\
        except KmsError as e:\n    \
        print(json.dumps({'code': e.code, 'type': type(e).__name__, 'message': e.message}))";
    let v: serde_json::Value = serde_json::from_slice(&ok(
        &python(&inst, &server, "revoked", &["-c", program], b""),
        "python",
    ))
    .unwrap();
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
}
