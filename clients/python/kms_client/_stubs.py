"""The gRPC stubs, generated from the repository's ``proto/`` by ``grpc_tools.protoc``.

The stubs are never committed: they are written into ``kms_client/_generated/`` (gitignored)
by ``generate.py``, by the package build (``setup.py``), or here on first use. They are
regenerated whenever a ``.proto`` file or the grpcio-tools version changes (a stamp file
records both). This module imports neither ``grpc`` nor ``grpc_tools`` at load time, so that
``setup.py`` and ``generate.py`` can load it by path before either is installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

#: The pinned versions the README, CI and the error messages name.
GRPC_VERSION = "1.85.1"
INSTALL_HINT = (
    "install them with: python3 -m pip install "
    f"grpcio=={GRPC_VERSION} grpcio-tools=={GRPC_VERSION}"
)

PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PACKAGE_DIR / "_generated"
STAMP_NAME = "STAMP"
#: The proto files' folder inside ``proto/`` (their import path, e.g. ``kms/v1/keys.proto``).
PROTO_SUBDIR = Path("kms") / "v1"


class StubsError(RuntimeError):
    """The stubs are missing or stale and cannot be generated (the message says why and what
    to do)."""


def find_proto_dir() -> Optional[Path]:
    """The ``proto/`` folder: ``$KMS_PROTO_DIR`` if set, else the repository's, found from this
    checkout (``clients/python/kms_client`` → ``proto``). ``None`` when neither exists (an
    installed package, whose stubs were generated at build time)."""
    env = os.environ.get("KMS_PROTO_DIR")
    if env:
        path = Path(env)
        if not (path / PROTO_SUBDIR).is_dir():
            raise StubsError(f"KMS_PROTO_DIR={env} has no {PROTO_SUBDIR} folder of .proto files")
        return path
    candidate = PACKAGE_DIR.parents[2] / "proto"
    return candidate if (candidate / PROTO_SUBDIR).is_dir() else None


def _proto_files(proto_dir: Path) -> List[Path]:
    files = sorted((proto_dir / PROTO_SUBDIR).glob("*.proto"))
    if not files:
        raise StubsError(f"no .proto files in {proto_dir / PROTO_SUBDIR}")
    return files


def _tools_version() -> str:
    try:
        from importlib.metadata import version

        return version("grpcio-tools")
    except Exception:  # noqa: BLE001 - not installed or no metadata: the stamp then differs
        return "unknown"


def _stamp(proto_dir: Path) -> str:
    """Identifies what the stubs were generated from: every proto file's name and content,
    and the grpcio-tools version."""
    h = hashlib.sha256()
    for f in _proto_files(proto_dir):
        h.update(f.relative_to(proto_dir).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    h.update(_tools_version().encode())
    return h.hexdigest()


def _current_stamp() -> Optional[str]:
    try:
        return (GENERATED_DIR / STAMP_NAME).read_text().strip()
    except OSError:
        return None


# Generated code imports its siblings by their proto path (`from kms.v1 import keys_pb2`); the
# stubs live flat in one package here, so those imports become relative.
_ABSOLUTE_IMPORT = re.compile(r"^from kms\.v1 import ", re.MULTILINE)


def generate(proto_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Generates the stubs into ``kms_client/_generated/`` unless they are up to date.

    Returns the folder. Safe when several processes generate at once: each writes a private
    folder and moves it into place whole.

    Raises ``StubsError`` when ``proto/`` cannot be found or grpcio-tools is missing.
    """
    proto_dir = proto_dir or find_proto_dir()
    if proto_dir is None:
        raise StubsError(
            "cannot find the proto/ folder to generate the gRPC stubs from: set KMS_PROTO_DIR "
            "to the repository's proto/ folder"
        )
    stamp = _stamp(proto_dir)
    if not force and _current_stamp() == stamp:
        return GENERATED_DIR
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as e:
        raise StubsError(
            f"the gRPC stubs must be generated from {proto_dir} but grpcio-tools is not "
            f"importable ({e}): {INSTALL_HINT}"
        ) from e

    work = Path(tempfile.mkdtemp(prefix="_generated.tmp-", dir=PACKAGE_DIR))
    try:
        out = work / "out"
        out.mkdir()
        files = [f.relative_to(proto_dir).as_posix() for f in _proto_files(proto_dir)]
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise StubsError(f"grpc_tools.protoc failed on {proto_dir} (its errors are above)")
        flat = work / "pkg"
        flat.mkdir()
        for src in sorted((out / PROTO_SUBDIR).iterdir()):
            text = _ABSOLUTE_IMPORT.sub("from . import ", src.read_text())
            (flat / src.name).write_text(text)
        (flat / "__init__.py").write_text(
            '"""gRPC stubs generated from proto/ by grpc_tools.protoc: do not edit."""\n'
        )
        (flat / STAMP_NAME).write_text(stamp + "\n")
        _move_into_place(flat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GENERATED_DIR


def _move_into_place(flat: Path, work: Path) -> None:
    """Replaces ``_generated`` with ``flat``; the old folder goes into ``work`` (deleted by
    the caller). If another process put an up-to-date folder in place first, keeps it."""
    for _ in range(5):
        try:
            os.rename(flat, GENERATED_DIR)
            return
        except OSError:
            if _current_stamp() == (flat / STAMP_NAME).read_text().strip():
                return
            try:
                os.rename(GENERATED_DIR, work / "old")
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(work / "old", ignore_errors=True)
    raise StubsError(f"cannot move the generated stubs into {GENERATED_DIR}")


def load() -> Tuple[ModuleType, ModuleType]:
    """The ``keys_pb2`` and ``keys_pb2_grpc`` modules, generated first if missing or stale.

    With no ``proto/`` folder at hand (an installed package), the stubs generated at build
    time are used as they are.
    """
    proto_dir = find_proto_dir()
    if proto_dir is not None:
        generate(proto_dir)
    elif _current_stamp() is None:
        raise StubsError(
            "the gRPC stubs were not generated and the proto/ folder is not at hand: set "
            "KMS_PROTO_DIR to the repository's proto/ folder, or install the package from "
            "the repository (pip install clients/python)"
        )
    from ._generated import keys_pb2, keys_pb2_grpc

    return keys_pb2, keys_pb2_grpc
