"""``python3 -m kms_client``: the Python client from the shell, interchangeable with
``kms-cli`` (ciphertexts are one line of standard base64 both ways).

Exit codes, as ``kms-cli``'s: 0 success; 1 the server refused (``CODE: message`` on stderr);
2 bad usage or local input; 3 no connection to a KMS.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from typing import Dict, List, Optional

from ._stubs import StubsError
from .client import KmsClient, KmsConfigError, KmsConnectError, KmsError

EPILOG = """\
connection: KMS_ADDR, KMS_CA_CERT, KMS_CLIENT_CERT, KMS_CLIENT_KEY and KMS_TLS_SERVER_NAME,
as for kms-cli (`. .kms-dev/env` after `kms-server dev`).

examples:
  echo -n 's3cret' | python3 -m kms_client encrypt --key app/db --context tenant=acme > ct.b64
  python3 -m kms_client decrypt --context tenant=acme < ct.b64
  kms-cli decrypt --context tenant=acme < ct.b64       # the same ciphertext
  python3 -m kms_client reencrypt --context tenant=acme < ct.b64 > new.b64
  python3 -m kms_client generate-data-key --key app/db  # JSON, the data key in base64
"""


def _pairs(values: Optional[List[str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise KmsConfigError(f"--context {v!r} is not KEY=VALUE")
        out[k] = val
    return out


def _read_b64() -> bytes:
    raw = sys.stdin.buffer.read()
    text = b"".join(raw.split())
    if not text:
        raise KmsConfigError("standard input is empty: expected a base64 ciphertext")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise KmsConfigError(f"standard input is not base64 ({e}); nothing was sent") from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m kms_client",
        description="Encrypt, decrypt, re-encrypt and generate data keys with the KMS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    ctx_help = "encryption context pair, repeat for several"
    e = sub.add_parser("encrypt", help="stdin (raw bytes) -> one base64 line")
    e.add_argument("--key", required=True, help="the key to encrypt under")
    e.add_argument("--context", action="append", metavar="KEY=VALUE", help=ctx_help)
    d = sub.add_parser("decrypt", help="stdin (base64) -> raw plaintext bytes")
    d.add_argument("--context", action="append", metavar="KEY=VALUE", help=ctx_help)
    r = sub.add_parser("reencrypt", help="stdin (base64) -> base64, under the latest version")
    r.add_argument("--context", action="append", metavar="KEY=VALUE", help=ctx_help)
    r.add_argument("--to-key", help="the key for the new ciphertext (default: its own)")
    g = sub.add_parser("generate-data-key", help="a data key, clear and wrapped (JSON)")
    g.add_argument("--key", required=True, help="the key to wrap it under")
    g.add_argument("--context", action="append", metavar="KEY=VALUE", help=ctx_help)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        context = _pairs(args.context)
        data = sys.stdin.buffer.read() if args.command == "encrypt" else None
        ciphertext = _read_b64() if args.command in ("decrypt", "reencrypt") else None
        with KmsClient.from_env() as kms:
            out = sys.stdout.buffer
            if args.command == "encrypt":
                assert data is not None
                res = kms.encrypt(args.key, data, context)
                out.write(base64.b64encode(res.ciphertext) + b"\n")
            elif args.command == "decrypt":
                assert ciphertext is not None
                out.write(kms.decrypt(ciphertext, context).plaintext)
            elif args.command == "reencrypt":
                assert ciphertext is not None
                rr = kms.reencrypt(ciphertext, context, args.to_key)
                out.write(base64.b64encode(rr.ciphertext) + b"\n")
            else:
                dk = kms.generate_data_key(args.key, context)
                doc = {
                    "plaintext_base64": base64.b64encode(dk.plaintext).decode(),
                    "ciphertext_base64": base64.b64encode(dk.ciphertext).decode(),
                    "key": dk.key,
                    "version": dk.version,
                }
                out.write(json.dumps(doc).encode() + b"\n")
            out.flush()
        return 0
    except KmsConnectError as e:
        print(f"kms_client: {e}", file=sys.stderr)
        return 3
    except KmsError as e:
        print(f"kms_client: {e}", file=sys.stderr)
        return 1
    except (KmsConfigError, StubsError) as e:
        print(f"kms_client: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
