"""The native (C++) runner's build: android_demo/native against the installed ExecuTorch wheel.

`build_runner()` configures and builds it once per version of its sources (and of the wheel)
into the cache folder ($MTP_EDGE_CACHE or ~/.cache/mtp-edge)/native/<hash>, with progress lines
on stderr; `jni_library()` is the JNI bridge of the same build. Running it and comparing its
tokens with the Python runtime's (`mtp-edge validate`) is native/validate.py.

`arch`: "native" (this machine, the default) or "arm64": cross-built for aarch64 Linux against the
aarch64 build of the same wheel into native/arm64-<hash>, and run under qemu-aarch64
(`runner_command()`; the toolchain, the wheel and qemu are native/arm64.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mtp_edge.models.errors import MtpEdgeError

RUNNER_NAME = "mtp_edge_runner"
MIN_CMAKE = (3, 28)  # the wheel's imported targets need it (older CMake garbles their $ORIGIN run paths)
SOURCE_GLOBS = ("*.h", "*.c", "*.cpp", "CMakeLists.txt", "jni/*.cpp", "jni/*.h", "tests/*.cpp", "tests/*.h",
                "third_party/**/*.h", "third_party/**/*.hpp", "third_party/**/*.c", "third_party/**/*.cpp")
ARCHES = ("native", "arm64")
JNI_LIBRARY = {"darwin": "libmtp_edge_jni.dylib", "win32": "mtp_edge_jni.dll"}.get(sys.platform, "libmtp_edge_jni.so")


class NativeError(MtpEdgeError, RuntimeError):
    """The native runner could not be built, or refused / failed a request (its message says which)."""

    def __init__(self, message: str, returncode: int | None = None, results: list | None = None):
        super().__init__(message)
        self.returncode = returncode
        self.results = results or []  # the results written before the failing request


def log_progress(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[native] {message}", file=sys.stderr, flush=True)


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise NativeError(f"arch {arch!r} is unknown; choose from {', '.join(ARCHES)}.")
    return arch


# --------------------------------------------------------------------------- build


def source_dir() -> Path:
    """android_demo/native of this checkout ($MTP_EDGE_NATIVE_SRC overrides it)."""
    override = os.environ.get("MTP_EDGE_NATIVE_SRC")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "android_demo" / "native"
    if not (folder / "CMakeLists.txt").is_file():
        raise NativeError(
            f"{folder}: the native runner's sources (CMakeLists.txt and the .cpp files) are not there; "
            "run from a source checkout of mtp-edge (pip install -e .) or point MTP_EDGE_NATIVE_SRC at android_demo/native."
        )
    return folder


def executorch_cmake_dir() -> Path:
    """The CMake package config the executorch wheel ships (share/cmake/executorch-config.cmake)."""
    try:
        import executorch
    except ImportError:
        raise NativeError("the executorch package is not installed; pip install -e . installs the pinned version.") from None
    # executorch is a namespace package (no __init__.py, so no __file__): look through its __path__.
    roots = [Path(p).resolve() for p in getattr(executorch, "__path__", [])]
    for root in roots:
        for folder in (root / "share" / "cmake", root / "lib" / "cmake" / "executorch"):
            if (folder / "executorch-config.cmake").is_file():
                return folder
    root = ", ".join(map(str, roots)) or "executorch"
    raise NativeError(f"{root}: this executorch install ships no CMake package (share/cmake/executorch-config.cmake); "
                      "install the executorch wheel from PyPI (pip install -e . pins it).")


def cmake_executable() -> tuple[str, tuple[int, ...]]:
    """A CMake >= 3.28: the `cmake` PyPI package's first, then the one on PATH."""
    candidates = []
    try:
        import cmake

        candidates.append(str(Path(cmake.CMAKE_BIN_DIR) / "cmake"))
    except (ImportError, AttributeError):
        pass
    candidates += [str(Path(sys.executable).with_name("cmake")), shutil.which("cmake") or ""]
    found = []
    for exe in dict.fromkeys(c for c in candidates if c and Path(c).is_file()):
        try:
            text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
        if match:
            version = tuple(int(g or 0) for g in match.groups())
            if version[:2] >= MIN_CMAKE:
                return exe, version
            found.append(f"{exe} {'.'.join(map(str, version))}")
    seen = f" (found {', '.join(found)})" if found else ""
    raise NativeError(f"building the native runner needs CMake >= {MIN_CMAKE[0]}.{MIN_CMAKE[1]}{seen}; "
                      f"install it with: pip install 'cmake>={MIN_CMAKE[0]}.{MIN_CMAKE[1]}'.")


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise NativeError("building the native runner needs a C++17 compiler and none was found (c++, g++, clang++, $CXX); "
                      "install one, e.g. apt-get install g++.")


def source_hash(folder: Path | None = None, *, arch: str = "native") -> str:
    """Key of a build: the sources' names and bytes, and the ExecuTorch install they link against
    (for arm64: the aarch64 wheel's version, the cross compiler and the toolchain file)."""
    check_arch(arch)
    folder = folder or source_dir()
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_GLOBS for p in folder.glob(pattern)})
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        from importlib import metadata

        version = metadata.version("executorch")
    except Exception:  # noqa: BLE001 - an unusual install; the path below still keys it
        version = "?"
    if arch == "native":
        digest.update(f"executorch={version}@{executorch_cmake_dir()}".encode())
    else:
        from . import arm64

        digest.update(f"arch={arch};{arm64.build_key()}".encode())
    return digest.hexdigest()[:16]


def native_cache_root() -> Path:
    from mtp_edge.export.cache import cache_root

    return cache_root() / "native"


def build_dir(arch: str = "native", src: Path | None = None) -> Path:
    """The cache folder of the current sources' build for `arch`: native/<hash>, native/arm64-<hash>."""
    key = source_hash(src or source_dir(), arch=arch)
    return native_cache_root() / (key if arch == "native" else f"{arch}-{key}")


def _configure_arguments(arch: str, out: Path, progress: bool) -> tuple[list[str], str]:
    """(the CMake configure arguments that choose the compiler and the ExecuTorch package, compiler)."""
    if arch == "native":
        compiler = _compiler()
        return [f"-Dexecutorch_DIR={executorch_cmake_dir()}", f"-DCMAKE_CXX_COMPILER={compiler}"], compiler
    from . import arm64

    return arm64.cmake_arguments(out, progress=progress)


def build_runner(*, progress: bool = True, jobs: int | None = None, arch: str = "native") -> Path:
    """The runner executable for `arch`, built first if its sources (or the ExecuTorch wheel) changed.
    An arm64 executable runs here through runner_command()."""
    src = source_dir()
    out = build_dir(arch, src)
    exe = out / "build" / RUNNER_NAME
    stamp = out / "built.json"
    if stamp.is_file() and exe.is_file():
        return exe
    out.mkdir(parents=True, exist_ok=True)
    # One build at a time per key (parallel test workers, two shells): the others wait, then reuse it.
    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and exe.is_file():
            return exe
        cmake, version = cmake_executable()
        arguments, compiler = _configure_arguments(arch, out, progress)
        build = out / "build"
        log = out / "build.log"
        started = time.perf_counter()
        configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *arguments]
        if shutil.which("ninja") and not (build / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        jobs = jobs or max(1, os.cpu_count() or 1)
        steps = [("configuring", configure), (f"compiling ({jobs} jobs)", [cmake, "--build", str(build), "-j", str(jobs)])]
        log_progress(f"building {RUNNER_NAME}{'' if arch == 'native' else ' for ' + arch} from {src} into {out} "
                     f"(CMake {'.'.join(map(str, version))})", progress)
        with open(log, "w") as log_file:
            for what, command in steps:
                log_progress(what, progress)
                log_file.write("$ " + " ".join(command) + "\n")
                log_file.flush()
                done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, text=True)
                if done.returncode != 0:
                    raise NativeError(f"the native runner build failed while {what.split(' ')[0]} "
                                      f"(exit {done.returncode}): {_first_error(log)}; full log: {log}")
        if not exe.is_file():
            raise NativeError(f"the build finished but {exe} is missing; full log: {log}")
        stamp.write_text(json.dumps({"sources": str(src), "arch": arch, "cmake": cmake, "compiler": compiler,
                                     "seconds": round(time.perf_counter() - started, 1)}) + "\n")
        log_progress(f"built {exe} ({time.perf_counter() - started:.1f}s)", progress)
    return exe


def runner_command(exe: Path, arch: str = "native", *, progress: bool = False) -> tuple[list[str], dict | None, str | None]:
    """(argv, environment or None for this process's, emulated CPU or None) that run the runner `exe`
    built for `arch`: itself natively; under qemu-aarch64 for arm64 (native/arm64.launcher)."""
    if check_arch(arch) == "native":
        return [str(exe)], None, None
    from . import arm64

    prefix, env, cpu = arm64.launcher(progress=progress)
    return [*prefix, str(exe)], env, cpu


def jni_library(*, progress: bool = True, jobs: int | None = None) -> Path:
    """The JNI bridge (libmtp_edge_jni, for com.mtpedge.MtpEdgeRunner on a desktop JVM).

    Built with the runner (same build folder, same key) when CMake's FindJNI finds a JDK's headers
    (set JAVA_HOME if it does not); the Android app builds the same target with the NDK.
    """
    exe = build_runner(progress=progress, jobs=jobs)
    lib = exe.with_name(JNI_LIBRARY)
    if not lib.is_file():
        raise NativeError(f"{lib} was not built: CMake found no JNI headers (no JDK). Install a JDK (e.g. apt-get install "
                          f"openjdk-17-jdk-headless), set JAVA_HOME, delete {exe.parents[1]} and build again.")
    return lib


def _first_error(log: Path) -> str:
    """The first line of a build log that reads like the cause."""
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        if re.search(r"\berror\b|CMake Error|undefined reference", line, re.IGNORECASE):
            return line.strip()[:400]
    return (lines[-1].strip() if lines else "no output")[:400]
