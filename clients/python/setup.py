"""Build hook: generates the gRPC stubs from ``proto/`` before the package is built, so that a
wheel carries them (they are never committed). Everything else is in ``pyproject.toml``."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import load_stubs_module  # noqa: E402


class BuildPyWithStubs(build_py):
    """``build_py`` that first (re)generates ``kms_client/_generated`` from ``proto/``."""

    def run(self) -> None:
        stubs = load_stubs_module()
        if stubs.find_proto_dir() is not None:
            stubs.generate()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
