"""Standalone C++ drivers (tests/native/*.cpp) built against android_demo/native sources, so the tests
can hold a C++ port to its Python original without building the whole runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "android_demo" / "native"


def compile_driver(out_dir: Path, driver: str, *sources: str) -> Path:
    """g++ tests/native/<driver>.cpp + android_demo/native/<sources> -> out_dir/<driver>, with the
    flags the runner uses for its arithmetic (no fused multiply-add contraction)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip(f"g++ is not installed: the C++ side of {driver} is not checked")
    exe = out_dir / driver
    subprocess.run(
        [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE}",
         # json.cpp reads through the vendored nlohmann/json, as the runner's CMake build includes it
         "-isystem", str(NATIVE / "third_party" / "nlohmann_json" / "include"),
         str(ROOT / "tests" / "native" / f"{driver}.cpp"), *(str(NATIVE / s) for s in sources), "-o", str(exe)],
        check=True,
    )
    return exe
