"""The native (C++) runner: built from android_demo/native against the installed ExecuTorch wheel.

`build_runner()` configures and builds it once per version of its sources (and of the wheel)
into the cache folder ($MTP_EDGE_CACHE or ~/.cache/mtp-edge)/native/<hash>, with progress lines
on stderr; `run_requests()` feeds it JSON-line requests and parses its JSON-line results;
`validate_bundle()` (`mtp-edge validate`) runs a bundle's demo prompts through both the native
runner and the Python pte backend and reports whether the tokens are identical.

The runner is a desktop build of the code the Android app will use (android_demo/native), so
validating it here is validating the on-device loop: same methods, same sampling, same tokens.
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
from dataclasses import dataclass
from pathlib import Path

from mtp_edge.models.errors import MtpEdgeError

RUNNER_NAME = "mtp_edge_runner"
MIN_CMAKE = (3, 28)  # the wheel's imported targets need it (older CMake garbles their $ORIGIN run paths)
SOURCE_GLOBS = ("*.h", "*.c", "*.cpp", "CMakeLists.txt", "jni/*.cpp", "jni/*.h")
JNI_LIBRARY = {"darwin": "libmtp_edge_jni.dylib", "win32": "mtp_edge_jni.dll"}.get(sys.platform, "libmtp_edge_jni.so")


class NativeError(MtpEdgeError, RuntimeError):
    """The native runner could not be built, or refused / failed a request (its message says which)."""

    def __init__(self, message: str, returncode: int | None = None, results: list | None = None):
        super().__init__(message)
        self.returncode = returncode
        self.results = results or []  # the results written before the failing request


def _progress(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[native] {message}", file=sys.stderr, flush=True)


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


def source_hash(folder: Path | None = None) -> str:
    """Key of a build: the sources' names and bytes, and the ExecuTorch install they link against."""
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
    digest.update(f"executorch={version}@{executorch_cmake_dir()}".encode())
    return digest.hexdigest()[:16]


def native_cache_root() -> Path:
    from mtp_edge.export.cache import cache_root

    return cache_root() / "native"


def build_runner(*, progress: bool = True, jobs: int | None = None) -> Path:
    """The runner executable, built first if its sources (or the ExecuTorch wheel) changed."""
    src = source_dir()
    key = source_hash(src)
    out = native_cache_root() / key
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
        compiler = _compiler()
        build = out / "build"
        log = out / "build.log"
        started = time.perf_counter()
        configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     f"-Dexecutorch_DIR={executorch_cmake_dir()}", f"-DCMAKE_CXX_COMPILER={compiler}"]
        if shutil.which("ninja") and not (build / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        jobs = jobs or max(1, os.cpu_count() or 1)
        steps = [("configuring", configure), (f"compiling ({jobs} jobs)", [cmake, "--build", str(build), "-j", str(jobs)])]
        _progress(f"building {RUNNER_NAME} from {src} into {out} (CMake {'.'.join(map(str, version))})", progress)
        with open(log, "w") as log_file:
            for what, command in steps:
                _progress(what, progress)
                log_file.write("$ " + " ".join(command) + "\n")
                log_file.flush()
                done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, text=True)
                if done.returncode != 0:
                    raise NativeError(f"the native runner build failed while {what.split(' ')[0]} "
                                      f"(exit {done.returncode}): {_first_error(log)}; full log: {log}")
        if not exe.is_file():
            raise NativeError(f"the build finished but {exe} is missing; full log: {log}")
        stamp.write_text(json.dumps({"sources": str(src), "cmake": cmake, "compiler": compiler,
                                     "seconds": round(time.perf_counter() - started, 1)}) + "\n")
        _progress(f"built {exe} ({time.perf_counter() - started:.1f}s)", progress)
    return exe


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


# --------------------------------------------------------------------------- run


@dataclass
class NativeResult:
    tokens: list[int]
    stats: dict  # GenerationStats.as_dict() fields + decode_methods_s, runner_s, runner_per_round_s


def request(prompt, *, k: int, max_new_tokens: int, sampling=None) -> dict:
    """One request line for the runner; `sampling` is a runtime.sampling.SamplingConfig (None: greedy)."""
    line = {"prompt": [int(t) for t in prompt], "k": int(k), "max_new_tokens": int(max_new_tokens)}
    if sampling is not None:
        line.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=sampling.seed)
    return line


def run_requests(bundle_dir: str | Path, requests: list[dict], *, runner: Path | None = None,
                 timeout: float | None = None, progress: bool = False) -> list[NativeResult]:
    """Runs the requests through one runner process (the bundle is loaded once)."""
    exe = runner or build_runner(progress=progress)
    text = "".join(json.dumps(r) + "\n" for r in requests)
    try:
        done = subprocess.run([str(exe), str(bundle_dir)], input=text, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NativeError(f"the native runner did not finish {len(requests)} request(s) within {timeout:.0f}s.") from None
    results = []
    for line in done.stdout.splitlines():
        if line.strip():
            doc = json.loads(line)
            results.append(NativeResult(doc["tokens"], doc["stats"]))
    if done.returncode != 0:
        raise NativeError(runner_error(done.returncode, done.stderr), done.returncode, results)
    if len(results) != len(requests):
        raise NativeError(f"the native runner answered {len(results)} of {len(requests)} requests without an error.")
    return results


def runner_error(returncode: int, stderr: str) -> str:
    """The runner's own `error: ...` line, or what killed it."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if lines:
        return lines[-1].removeprefix("error: ")
    if returncode < 0:
        return f"the native runner crashed (signal {-returncode}); stderr: {stderr.strip()[-400:]}"
    return f"the native runner exited with code {returncode}; stderr: {stderr.strip()[-400:]}"


# --------------------------------------------------------------------------- validate


def demo_prompts(manifest: dict, max_new_tokens: int) -> tuple[list[list[int]], str]:
    """The held-out prompts of the pair the bundle came from (those of the shipped pair if it has none).

    Ids are folded into the bundle's vocabulary (a random test pair may have a smaller one) and
    prompts are cut so that prompt + new tokens fit the cache where the cache allows it.
    """
    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts

    source = Path(manifest.get("source", {}).get("target") or "").parent
    pair_dir = source if (source / "heldout.json").is_file() else default_pair_dir()
    vocab = int(manifest["target_config"]["vocab_size"])
    max_seq_len = int(manifest["cache"]["max_seq_len"])
    keep = max(1, min(max_seq_len - 1 - max_new_tokens, max_seq_len // 2))
    prompts = [[int(t) % vocab for t in p["ids"][:keep]] for p in heldout_prompts(pair_dir)]
    return prompts, str(pair_dir / "heldout.json")


def validate_bundle(bundle_dir: str | Path, *, max_new_tokens: int = 64, num_prompts: int | None = None,
                    progress: bool = True) -> dict:
    """Native runner vs the Python pte backend on the bundle's demo prompts: greedy and seeded sampling
    at the bundle's K, and greedy K = 0. Tokens must be identical; tok/s and per-round overheads are reported."""
    from mtp_edge.export.bundle import read_manifest

    from mtp_edge.runtime.backends.pte import PteBackend
    from mtp_edge.runtime.sampling import SamplingConfig
    from mtp_edge.runtime.speculative import generate

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, needs="pte")
    k = int(manifest["k"])
    prompts, prompts_from = demo_prompts(manifest, max_new_tokens)
    prompts = prompts[:num_prompts] if num_prompts else prompts
    cases = [
        ("greedy", k, SamplingConfig()),
        ("sampling", k, SamplingConfig(temperature=0.8, top_p=0.95, seed=11)),
        ("greedy", 0, SamplingConfig()),
    ]
    exe = build_runner(progress=progress)

    # Native: one process, the bundle loaded once; a short warm-up request first (page-in, XNNPACK setup).
    warm = request(prompts[0], k=k, max_new_tokens=min(max_new_tokens, 2 * (k + 1)))
    lines = [warm] + [request(p, k=ck, max_new_tokens=max_new_tokens, sampling=cs) for _, ck, cs in cases for p in prompts]
    _progress(f"native runner: {len(lines) - 1} generations", progress)
    started = time.perf_counter()
    native = run_requests(bundle_dir, lines, runner=exe)[1:]
    native_wall = time.perf_counter() - started

    _progress(f"python pte backend: {len(lines) - 1} generations", progress)
    backend = PteBackend(bundle_dir)
    eos = backend.eos_ids
    generate(backend, prompts[0], k=k, max_new_tokens=warm["max_new_tokens"], eos_ids=eos)
    python = []
    for _, ck, cs in cases:
        for p in prompts:
            # The first token is emitted after prefill, before the decode clock starts: the method
            # time from there on is the decode's, as the native runner's decode_methods_s.
            at_first = []
            g = generate(backend, p, k=ck, max_new_tokens=max_new_tokens, sampling=cs, eos_ids=eos,
                         on_token=lambda t: at_first or at_first.append(backend.method_seconds))
            python.append((g, backend.method_seconds - at_first[0]))

    rows, index = [], 0
    for name, ck, cs in cases:
        n_nat = native[index:index + len(prompts)]
        n_py = python[index:index + len(prompts)]
        index += len(prompts)
        identical = [a.tokens == b.tokens for a, (b, _) in zip(n_nat, n_py)]
        tokens = sum(r.stats["new_tokens"] - 1 for r in n_nat)
        native_decode = sum(r.stats["decode_s"] for r in n_nat)
        native_rounds = sum(r.stats["rounds"] for r in n_nat)
        python_decode = sum(g.stats.decode_s for g, _ in n_py)
        python_methods = sum(m for _, m in n_py)
        python_rounds = sum(g.stats.rounds for g, _ in n_py)
        rows.append({
            "case": f"{name} K={ck}",
            "k": ck,
            "sampling": {"temperature": cs.temperature, "top_k": cs.top_k, "top_p": cs.top_p, "seed": cs.seed},
            "prompts": len(prompts),
            "identical": sum(identical),
            "token_identical": all(identical),
            "mismatched_prompts": [i for i, same in enumerate(identical) if not same],
            "new_tokens": tokens,
            "native_tokens_per_s": tokens / native_decode if native_decode else 0.0,
            "python_tokens_per_s": sum(g.stats.new_tokens - 1 for g, _ in n_py) / python_decode if python_decode else 0.0,
            "acceptance_rate": (sum(r.stats["accepted"] for r in n_nat) / sum(r.stats["drafted"] for r in n_nat)
                                if ck else None),
            "native_runner_s_per_round": sum(r.stats["runner_s"] for r in n_nat) / native_rounds if native_rounds else 0.0,
            "python_runner_s_per_round": (python_decode - python_methods) / python_rounds if python_rounds else 0.0,
            "native_tokens": [r.tokens for r in n_nat],
        })
    greedy_spec, greedy_plain = rows[0]["native_tokens"], rows[2]["native_tokens"]
    report = {
        "bundle": str(bundle_dir),
        "runner": str(exe),
        "prompts_from": prompts_from,
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "k": k,
        "quantization": manifest.get("quantization", {}).get("recipes", {}).get("pte", manifest.get("quantization", {}).get("recipe")),
        "native_wall_s": native_wall,
        "cases": [{key: v for key, v in row.items() if key != "native_tokens"} for row in rows],
        "native_speculative_equals_plain": greedy_spec == greedy_plain,
    }
    report["ok"] = all(row["token_identical"] for row in rows) and report["native_speculative_equals_plain"]
    return report


def format_validate(report: dict) -> str:
    lines = [
        f"validate {report['bundle']}: native runner vs Python pte backend, {report['prompts']} prompts "
        f"({report['prompts_from']}), {report['max_new_tokens']} new tokens each, recipe {report['quantization']}",
        f"{'case':<28}{'identical':>10}{'native tok/s':>14}{'python tok/s':>14}{'speedup':>9}{'accept':>8}"
        f"{'native us/round':>17}{'python us/round':>17}",
    ]
    for row in report["cases"]:
        sampling = row["sampling"]
        label = row["case"] + (f" t={sampling['temperature']:g} p={sampling['top_p']:g}" if sampling["temperature"] else "")
        speedup = row["native_tokens_per_s"] / row["python_tokens_per_s"] if row["python_tokens_per_s"] else 0.0
        accept = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.1%}"
        lines.append(
            f"{label:<28}{str(row['identical']) + '/' + str(row['prompts']):>10}{row['native_tokens_per_s']:>14.1f}"
            f"{row['python_tokens_per_s']:>14.1f}{speedup:>8.2f}x{accept:>8}"
            f"{row['native_runner_s_per_round'] * 1e6:>17.1f}{row['python_runner_s_per_round'] * 1e6:>17.1f}"
        )
    lines.append(f"native greedy speculative == native greedy K=0: {'yes' if report['native_speculative_equals_plain'] else 'NO'}")
    lines.append("us/round: time per round outside the ExecuTorch method calls (sampling, accept rule, copies, bookkeeping)")
    lines.append("OK: the native runner gives the Python runtime's tokens" if report["ok"] else
                 "MISMATCH: the native runner's tokens differ from the Python runtime's (see identical)")
    return "\n".join(lines) + "\n"
