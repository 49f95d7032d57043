#!/usr/bin/env python3
"""Generates the gRPC stubs of ``kms_client`` from the repository's ``proto/`` with
``grpc_tools.protoc``, into ``kms_client/_generated/`` (gitignored). ``KmsClient`` does the
same on first use; run this ahead of time, e.g. before a read-only deployment.

Usage: python3 generate.py [--proto-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_stubs_module() -> ModuleType:
    """``kms_client/_stubs.py`` by path: it needs neither grpc nor the package imported."""
    path = Path(__file__).resolve().parent / "kms_client" / "_stubs.py"
    spec = importlib.util.spec_from_file_location("kms_client_stubs", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proto-dir", type=Path, help="the proto/ folder (default: the repository's)")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = p.parse_args()
    stubs = load_stubs_module()
    try:
        out = stubs.generate(args.proto_dir, force=args.force)
    except stubs.StubsError as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 1
    print(f"stubs up to date in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
