"""The native runner for ARM64 (aarch64 Linux), cross-built here and run under qemu-aarch64.

`mtp-edge validate BUNDLE --arch arm64` (native/validate.py) checks the ARM build of the runner, the
ARM ExecuTorch kernels (XNNPACK's NEON / dot-product paths, the optimized and quantized kernels) and
the runner's logic against the Python pte backend on x86, without a phone:

- the aarch64 build of the installed ExecuTorch wheel (same version, from PyPI: `pip download
  --platform manylinux_2_28_aarch64`) is downloaded once into the cache folder and unzipped
  (cache/native/arm64-executorch-<version>/): its lib/*.so, include/ and share/cmake package;
- native/build.py cross-builds android_demo/native against it with the Debian cross compiler
  (g++-12-aarch64-linux-gnu) and the CMake toolchain file written here, cached by source hash as the
  desktop build is (cache/native/arm64-<hash>/);
- `launcher()` runs it under qemu-aarch64 (Debian's qemu-user) with the aarch64 glibc
  (QEMU_LD_PREFIX), the wheel's libraries (LD_LIBRARY_PATH in the guest) and a pinned CPU model
  (QEMU_CPU, default cortex-a76: a phone big core with the dot-product int8 instructions;
  MTP_EDGE_QEMU_CPU overrides it).

An aarch64 glibc build is not an Android (bionic) build: it validates the ARM kernels and the
runner's code, not the APK. Timings under qemu are emulated and say nothing about a phone's speed.
The tools: `make arm64-tools` installs them; when they are missing this module installs them with
apt-get if it runs as root, else it raises an error naming the apt-get line.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .build import NativeError, log_progress, native_cache_root

PLATFORM = "manylinux_2_28_aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # the aarch64 glibc of Debian's cross toolchain (libc6-arm64-cross)
GCC_VERSION = "12"
APT_PACKAGES = (f"g++-{GCC_VERSION}-aarch64-linux-gnu", "qemu-user")
APT_LINE = "apt-get update && apt-get install -y " + " ".join(APT_PACKAGES)
# Phone big cores with ARMv8.2 dot-product (SDOT/UDOT) and fp16 arithmetic, which XNNPACK's int8 and
# fp16 kernels dispatch on; the first one this qemu knows is used. "max" (every feature qemu has,
# SVE2 and i8mm included) would pick kernels few phones run.
QEMU_CPUS = ("cortex-a76", "neoverse-n1")

TOOLCHAIN = """\
# Written by mtp_edge.runtime.native.arm64: aarch64 Linux (glibc) with Debian's cross compilers.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER {cc})
set(CMAKE_CXX_COMPILER {cxx})
set(CMAKE_FIND_ROOT_PATH {sysroot})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# The executorch package lives outside the sysroot (executorch_DIR points at the unzipped wheel).
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
"""


# --------------------------------------------------------------------------- tools


TOOLS = {"cc": f"aarch64-linux-gnu-gcc-{GCC_VERSION}", "cxx": f"aarch64-linux-gnu-g++-{GCC_VERSION}", "qemu": "qemu-aarch64"}


def _tool_paths() -> dict[str, str | None]:
    return {role: shutil.which(name) for role, name in TOOLS.items()}


def _missing(paths: dict[str, str | None]) -> list[str]:
    missing = [TOOLS[role] for role, path in paths.items() if not path]
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        missing.append(f"{SYSROOT}/lib/ld-linux-aarch64.so.1")
    return missing


def tools(*, progress: bool = True, install: bool = True) -> dict[str, str]:
    """{"cc", "cxx", "qemu"}: the cross compilers and qemu-aarch64, installed with apt-get first when
    they are missing and this process may (root, apt-get on PATH, `install`)."""
    paths = _tool_paths()
    missing = _missing(paths)
    if not missing:
        return paths  # type: ignore[return-value]
    can_install = install and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0
    if can_install:
        log_progress(f"installing the ARM64 tools ({', '.join(APT_PACKAGES)}) with apt-get", progress)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *APT_PACKAGES]):
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                tail = (done.stderr.strip() or done.stdout.strip())[-300:]
                raise NativeError(f"validating on ARM64 needs {', '.join(missing)}; `{' '.join(command)}` failed "
                                  f"(exit {done.returncode}): {tail}. Install them with: {APT_LINE} (or `make arm64-tools`).")
        paths = _tool_paths()
        missing = _missing(paths)
    if missing:
        raise NativeError(f"validating on ARM64 needs the aarch64 cross compiler and qemu-user; missing: {', '.join(missing)}. "
                          f"Install them (as root) with: {APT_LINE} (or `make arm64-tools` in the repository).")
    return paths  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def qemu_cpu(qemu: str) -> str:
    """The CPU model qemu-aarch64 emulates: $MTP_EDGE_QEMU_CPU, else the first of QEMU_CPUS it knows."""
    override = os.environ.get("MTP_EDGE_QEMU_CPU")
    if override:
        return override
    done = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60)
    known = set((done.stdout + done.stderr).split())
    for name in QEMU_CPUS:
        if name in known:
            return name
    raise NativeError(f"{qemu} knows none of the CPU models {', '.join(QEMU_CPUS)} (`qemu-aarch64 -cpu help`); "
                      "set MTP_EDGE_QEMU_CPU to one with the dot-product instructions.")


# --------------------------------------------------------------------------- the aarch64 ExecuTorch wheel


def executorch_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        raise NativeError("the executorch package is not installed; pip install -e . installs the pinned version.") from None


def wheel_root(version: str | None = None) -> Path:
    """cache/native/arm64-executorch-<version>: the downloaded wheel and its unzipped executorch/."""
    return native_cache_root() / f"arm64-executorch-{version or executorch_version()}"


def executorch_dir(*, progress: bool = True) -> Path:
    """The unzipped aarch64 wheel's executorch/ (lib/, include/, share/cmake/), downloaded once per version."""
    from mtp_edge.export.cache import exclusive

    version = executorch_version()
    root = wheel_root(version)
    unzipped = root / "executorch"
    stamp = root / "unzipped"
    if stamp.is_file():
        return unzipped
    with exclusive(root.with_name(root.name + ".lock")):
        if stamp.is_file():
            return unzipped
        download = root / "wheel"
        download.mkdir(parents=True, exist_ok=True)
        wheels = sorted(download.glob(f"executorch-{version}-*aarch64.whl"))
        if not wheels:
            python = f"{sys.version_info.major}.{sys.version_info.minor}"
            command = [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--platform", PLATFORM,
                       "--python-version", python, "--only-binary=:all:", "--no-deps", "--quiet", "-d", str(download)]
            log_progress(f"downloading the aarch64 executorch {version} wheel ({PLATFORM}) into {download}", progress)
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr.strip() or done.stdout.strip())[-400:]
                raise NativeError(f"could not download the aarch64 executorch {version} wheel (`{' '.join(command[2:])}`, "
                                  f"exit {done.returncode}): {tail}")
            wheels = sorted(download.glob(f"executorch-{version}-*aarch64.whl"))
            if not wheels:
                raise NativeError(f"pip download wrote no executorch {version} wheel into {download}.")
            log_progress(f"downloaded {wheels[-1].name} ({wheels[-1].stat().st_size / 1e6:.1f} MB, "
                         f"{time.perf_counter() - started:.1f}s)", progress)
        if unzipped.exists():
            shutil.rmtree(unzipped)  # an interrupted unzip
        with zipfile.ZipFile(wheels[-1]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("executorch/") and
                       m.split("/")[1] in ("lib", "include", "share")]
            wheel.extractall(root, members)
        if not (unzipped / "share" / "cmake" / "executorch-config.cmake").is_file():
            raise NativeError(f"{wheels[-1]}: the wheel ships no executorch/share/cmake/executorch-config.cmake.")
        stamp.write_text(wheels[-1].name + "\n")
    return unzipped


def build_key() -> str:
    """What an ARM64 build depends on besides the runner's sources (native/build.source_hash adds it)."""
    return f"executorch={executorch_version()}@{PLATFORM};gcc-{GCC_VERSION};{TOOLCHAIN}"


def cmake_arguments(out: Path, *, progress: bool = True) -> tuple[list[str], str]:
    """(CMake configure arguments, compiler) of a cross build into `out`: the toolchain file (written
    there), the aarch64 wheel's package; no JNI bridge (no aarch64 JDK), no unit tests (cross build)."""
    paths = tools(progress=progress)
    package = executorch_dir(progress=progress) / "share" / "cmake"
    toolchain = out / "aarch64-linux-gnu.cmake"
    toolchain.write_text(TOOLCHAIN.format(cc=paths["cc"], cxx=paths["cxx"], sysroot=SYSROOT))
    return [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", f"-Dexecutorch_DIR={package}", "-DMTP_EDGE_BUILD_JNI=OFF"], paths["cxx"]


# --------------------------------------------------------------------------- running


def launcher(*, progress: bool = False) -> tuple[list[str], dict[str, str], str]:
    """(argv prefix, environment, CPU model) that run an aarch64 executable of the runner here."""
    paths = tools(progress=progress)
    cpu = qemu_cpu(paths["qemu"])
    lib = executorch_dir(progress=progress) / "lib"
    env = {**os.environ, "QEMU_LD_PREFIX": str(SYSROOT), "QEMU_CPU": cpu}
    # LD_LIBRARY_PATH for the guest's loader only (-E): the host's qemu-aarch64 keeps its own.
    return [paths["qemu"], "-E", f"LD_LIBRARY_PATH={lib}"], env, cpu
