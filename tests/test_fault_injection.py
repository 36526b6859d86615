"""Fault injection (issue 23, item 2): a bundle is a folder a user copies to a phone, so a damaged one
must fail loudly, with one line that names the file and the fix, and never run half-valid.

    artifact faults    every artifact the manifest lists x {truncated to half, one byte flipped in
                       the middle, deleted, swapped with a same-named file of another bundle}: the
                       Python backends raise BundleError (never another type); the native runner and
                       the JVM bridge refuse the program faults of the .pte bundle with the same message
    manifest faults    manifest.json made invalid JSON, or a field given the wrong type: BundleError
                       naming manifest.json (Python), a named refusal (native runner), not a KeyError
    SIGKILL            an export killed at several moments leaves nothing that reads as a bundle, and
                       an export killed while replacing a bundle leaves the old bundle whole; a rerun
                       into the same folder gives a bundle that loads and generates
    full disk          an export into a size-limited tmpfs fails with ENOSPC and leaves the mount empty

The shared bundles are the run's (conftest.shared_export) with the settings of test_export_pte /
test_native_runner (portable .pte: "tiny-portable") and test_export_onnx ("tiny-onnx"); the tests copy
them before they damage them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtp_edge.export.bundle import MANIFEST, PROGRAM_FILE, ExportSettings, write_bundle
from mtp_edge.export.manifest import BundleError, read_manifest
from mtp_edge.runtime.backends.onnx import OnnxBackend
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.speculative import generate

K, CHUNK, MAX_SEQ = 3, 4, 40
PTE = ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable", formats="pte", quantize="none")
# test_export_pte's XNNPACK bundle: another .pte of the same pair (the "swapped" program comes from it).
XNNPACK = ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="xnnpack", formats="pte,onnx", quantize="none",
                         draft_chains=())
ONNX = ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, formats="onnx", quantize="none")
# A second, small ONNX export (the SIGKILL and full-disk tests export it; its graphs differ from ONNX's).
SMALL = ExportSettings(formats="onnx", quantize="none", k=2, max_seq_len=32, prefill_chunk=4)

PTE_GROUP = pytest.mark.xdist_group("tiny-portable")
ONNX_GROUP = pytest.mark.xdist_group("tiny-onnx")

FAULTS = ("truncated", "flipped", "deleted", "swapped")
PTE_FILES = (PROGRAM_FILE, "config.json", "generation_config.json")
ONNX_FILES = ("target.onnx", "drafter.onnx", "config.json", "generation_config.json")


@pytest.fixture(scope="module")
def pte_bundle(tiny_dirs, shared_export) -> Path:
    return shared_export(tiny_dirs, PTE)


@pytest.fixture(scope="module")
def onnx_bundle(tiny_dirs, shared_export) -> Path:
    return shared_export(tiny_dirs, ONNX)


def _copy(bundle: Path, tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(bundle, out)
    return out


def _swap_source(name: str, bundle: Path, other_bundle, tiny_dirs) -> Path:
    """What replaces `name` in a "swapped" fault, a file with other bytes: another bundle's program (the
    XNNPACK export of the same pair), the other graph of the bundle (target.onnx <-> drafter.onnx), the
    drafter checkpoint's config.json; generation_config.json gets the bundle's config.json (the
    drafter's generation_config.json has the same bytes as the target's)."""
    if name == PROGRAM_FILE:
        return other_bundle() / PROGRAM_FILE
    if name.endswith(".onnx"):
        return bundle / ("drafter.onnx" if name == "target.onnx" else "target.onnx")
    if name == "generation_config.json":
        return bundle / "config.json"
    return tiny_dirs[1] / name


def _inject(folder: Path, name: str, fault: str, source=None) -> None:
    """Damage folder/name; `source` (called for "swapped" only) gives the file that replaces it."""
    path = folder / name
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "flipped":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif fault == "deleted":
        path.unlink()
    elif fault == "swapped":
        source = source()
        other = source.read_bytes()
        assert other != data, f"the swap source {source} has the same bytes as {name}"
        path.write_bytes(other)
    else:  # pragma: no cover
        raise AssertionError(fault)


def _assert_named(message: str, name: str, fault: str) -> None:
    assert "\n" not in message, message
    assert name in message, message
    if fault == "deleted":
        assert f"missing artifact {name}" in message, message
    else:
        assert f"artifact {name} was modified after export" in message, message
    assert "export the bundle again" in message, message


def _listed(bundle: Path) -> set[str]:
    return {a["file"] for a in json.loads((bundle / MANIFEST).read_text())["artifacts"].values()}


# --------------------------------------------------------------------------- artifact faults: Python backends


@PTE_GROUP
@pytest.mark.slow
def test_pte_matrix_covers_every_listed_artifact(pte_bundle):
    assert _listed(pte_bundle) == set(PTE_FILES)


@ONNX_GROUP
@pytest.mark.slow
def test_onnx_matrix_covers_every_listed_artifact(onnx_bundle):
    assert _listed(onnx_bundle) == set(ONNX_FILES)


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", PTE_FILES)
def test_pte_artifact_fault_is_a_bundle_error(pte_bundle, tiny_dirs, shared_export, tmp_path, name, fault):
    copy = _copy(pte_bundle, tmp_path)
    _inject(copy, name, fault, lambda: _swap_source(name, pte_bundle, lambda: shared_export(tiny_dirs, XNNPACK), tiny_dirs))
    with pytest.raises(BundleError) as e:
        PteBackend(copy)
    _assert_named(str(e.value), name, fault)


@ONNX_GROUP
@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", ONNX_FILES)
def test_onnx_artifact_fault_is_a_bundle_error(onnx_bundle, tiny_dirs, tmp_path, name, fault):
    copy = _copy(onnx_bundle, tmp_path)
    _inject(copy, name, fault, lambda: _swap_source(name, onnx_bundle, None, tiny_dirs))
    with pytest.raises(BundleError) as e:
        OnnxBackend(copy, threads=1)
    _assert_named(str(e.value), name, fault)


# --------------------------------------------------------------------------- artifact faults: native runner, JVM


def _native(runner: Path, bundle: Path) -> subprocess.CompletedProcess:
    request = {"prompt": [1, 2, 3], "k": K, "max_new_tokens": 4}
    return subprocess.run([str(runner), str(bundle)], input=json.dumps(request) + "\n", capture_output=True, text=True,
                          timeout=120)


def _refused(done: subprocess.CompletedProcess) -> str:
    """The runner's one error line; a refusal is exit 2 with no tokens written (a crash is a signal)."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "", done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr[-2000:]
    return last


@pytest.fixture(scope="module")
def runner() -> Path:
    from mtp_edge.runtime.native import build

    return build.build_runner(progress=False)


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.native
def test_native_runner_generates_from_the_intact_copy(runner, pte_bundle, tmp_path):
    # The control for the refusals below: the same request on an undamaged copy writes tokens.
    done = _native(runner, _copy(pte_bundle, tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.native
@pytest.mark.parametrize("fault", FAULTS)
def test_native_runner_refuses_program_fault(runner, pte_bundle, tiny_dirs, shared_export, tmp_path, fault):
    # The runner reads model.pte and manifest.json only (it checks the program artifact, not the
    # transformers config files a Python user's tokenizer/config loader reads).
    copy = _copy(pte_bundle, tmp_path)
    _inject(copy, PROGRAM_FILE, fault, lambda: shared_export(tiny_dirs, XNNPACK) / PROGRAM_FILE)
    _assert_named(_refused(_native(runner, copy)), PROGRAM_FILE, fault)


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.native
@pytest.mark.skipif(not (shutil.which("javac") and shutil.which("java")), reason="needs a JDK (javac, java)")
def test_jvm_bridge_refuses_program_faults(pte_bundle, tiny_dirs, shared_export, tmp_path, tmp_path_factory):
    from mtp_edge.runtime.native import build
    from test_android_bridge import EXCEPTION, JAVA_SOURCES, _jvm

    classes = tmp_path_factory.mktemp("java")
    done = subprocess.run(["javac", "--release", "11", "-d", str(classes), *map(str, JAVA_SOURCES)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    copies = {}
    for fault in FAULTS:
        copies[fault] = _copy(pte_bundle, tmp_path, fault)
        _inject(copies[fault], PROGRAM_FILE, fault, lambda: shared_export(tiny_dirs, XNNPACK) / PROGRAM_FILE)
    answers = _jvm(build.jni_library(progress=False), classes,
                   [f"open {copies[f]}" for f in FAULTS] + [f"open {pte_bundle}", "close"])
    for fault, answer in zip(FAULTS, answers):
        assert answer.get("exception") == EXCEPTION, (fault, answer)
        _assert_named(answer["message"], PROGRAM_FILE, fault)
    assert answers[len(FAULTS)]["op"] == "open" and "exception" not in answers[len(FAULTS)]  # the bridge still opens a good one


# --------------------------------------------------------------------------- manifest faults


def _set(path: str, value):
    """An edit of the parsed manifest: path "a.b.c" set to value."""

    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
        return doc

    return edit


# (id, edit of the parsed manifest or a function of its text giving the new bytes)
TEXT_FAULTS = {
    "truncated-json": lambda text: text[: len(text) // 2].encode(),
    "empty": lambda text: b"",
    "not-utf8": lambda text: b"\xff\xfe" + text.encode()[2:],
    "json-array": lambda text: b"[]",
}
FIELD_FAULTS = {
    "k-string": _set("k", "three"),
    "k-null": _set("k", None),
    "k-list": _set("k", [3]),
    "schema-string": _set("schema_version", "3"),
    "formats-string": _set("formats", "pte"),
    "cache-string": _set("cache", "big"),
    "cache-max-seq-len-string": _set("cache.max_seq_len", "forty"),
    "eos-number": _set("eos_token_ids", 1),
    "target-config-list": _set("target_config", []),
    "artifacts-list": _set("artifacts", []),
    "artifact-entry-string": lambda d: _set(f"artifacts.{next(iter(d['artifacts']))}", "a file")(d),
    "artifact-bytes-string": lambda d: _set(f"artifacts.{next(iter(d['artifacts']))}.bytes", "many")(d),
    "source-string": _set("source", "somewhere"),
    "source-list": _set("source", ["a", "b"]),
    "runtime-list": _set("runtime", [True, 0]),
    "quantization-string": _set("quantization", "none"),
}
PTE_FIELD_FAULTS = {
    "methods-list": _set("methods", []),
    "verify-lengths-string": _set("methods.verify.lengths", "ab"),
}
ONNX_FIELD_FAULTS = {
    "onnx-list": _set("onnx", []),
    "onnx-empty": _set("onnx", {}),
    "onnx-target-string": _set("onnx.target", "target.onnx"),
}


def _damage_manifest(folder: Path, fault: str, extra: dict) -> None:
    path = folder / MANIFEST
    text = path.read_text()
    if fault in TEXT_FAULTS:
        path.write_bytes(TEXT_FAULTS[fault](text))
    else:
        edit = {**FIELD_FAULTS, **extra}[fault]
        path.write_text(json.dumps(edit(json.loads(text))))


def _assert_manifest_named(message: str) -> None:
    assert "\n" not in message, message
    assert MANIFEST in message, message
    # The fix (export the bundle again / re-export), or that the file is no bundle manifest at all.
    assert "export" in message or "not a bundle manifest" in message, message


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.parametrize("fault", [*TEXT_FAULTS, *FIELD_FAULTS, *PTE_FIELD_FAULTS])
def test_pte_manifest_fault_is_a_bundle_error(pte_bundle, tmp_path, fault):
    copy = _copy(pte_bundle, tmp_path)
    _damage_manifest(copy, fault, PTE_FIELD_FAULTS)
    with pytest.raises(BundleError) as e:
        PteBackend(copy)
    _assert_manifest_named(str(e.value))


@ONNX_GROUP
@pytest.mark.slow
@pytest.mark.parametrize("fault", [*TEXT_FAULTS, *FIELD_FAULTS, *ONNX_FIELD_FAULTS])
def test_onnx_manifest_fault_is_a_bundle_error(onnx_bundle, tmp_path, fault):
    copy = _copy(onnx_bundle, tmp_path)
    _damage_manifest(copy, fault, ONNX_FIELD_FAULTS)
    with pytest.raises(BundleError) as e:
        OnnxBackend(copy, threads=1)
    _assert_manifest_named(str(e.value))


@PTE_GROUP
@pytest.mark.slow
@pytest.mark.native
@pytest.mark.parametrize("fault", ["truncated-json", "empty", "json-array", "k-string", "cache-string", "formats-string",
                                   "artifact-bytes-string", "verify-lengths-string"])
def test_native_runner_refuses_manifest_fault(runner, pte_bundle, tmp_path, fault):
    copy = _copy(pte_bundle, tmp_path)
    _damage_manifest(copy, fault, PTE_FIELD_FAULTS)
    message = _refused(_native(runner, copy))
    assert MANIFEST in message or "manifest" in message, message


# --------------------------------------------------------------------------- SIGKILL during export

EXPORT_SCRIPT = """
import sys
from mtp_edge.export.bundle import ExportSettings, write_bundle
write_bundle(sys.argv[1], sys.argv[2], sys.argv[3], ExportSettings.from_json({settings}), progress=True)
"""


def _export_process(tiny_dirs, out_dir: Path) -> subprocess.Popen:
    script = EXPORT_SCRIPT.format(settings=repr(SMALL.to_json()))
    return subprocess.Popen([sys.executable, "-c", script, str(tiny_dirs[0]), str(tiny_dirs[1]), str(out_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(process: subprocess.Popen, *, after: float | None = None, stage: str | None = None) -> str:
    """SIGKILL the export after `after` seconds or once its stderr shows a line starting with `stage`; its stderr so far."""
    seen = []
    if after is not None:
        time.sleep(after)
    else:
        for line in process.stderr:
            seen.append(line)
            if line.startswith(stage):
                break
        else:
            process.wait()
            raise AssertionError(f"the export ended (exit {process.returncode}) before stage {stage!r}: {''.join(seen)[-2000:]}")
    assert process.poll() is None, f"the export finished before it was killed: {''.join(seen)[-2000:]}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return "".join(seen)


def _not_a_bundle(out_dir: Path) -> None:
    assert not out_dir.exists() or not (out_dir / MANIFEST).exists(), sorted(p.name for p in out_dir.iterdir())
    with pytest.raises(BundleError, match=r"not a folder|no manifest\.json"):
        read_manifest(out_dir)


def _leftovers(out_dir: Path) -> list[str]:
    if not out_dir.parent.exists():  # killed before the export made any folder
        return []
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name != out_dir.name)


@pytest.mark.slow
def test_sigkill_during_export_leaves_no_bundle(tiny_dirs, tmp_path):
    out_dir = tmp_path / "out" / "bundle"
    # Before any folder, and after the last graph is written (the manifest not yet): each stage-bound
    # kill costs an export, and the suite's 20 minutes allow these two and the one below.
    moments = [dict(after=0.5), dict(stage="[export 4/4]")]
    for moment in moments:
        _kill(_export_process(tiny_dirs, out_dir), **moment)
        _not_a_bundle(out_dir)
        for name in _leftovers(out_dir):  # hidden staging folders of killed exports, never a bundle
            assert name.startswith(f".{out_dir.name}.partial-"), name
            assert not (out_dir.parent / name / MANIFEST).exists(), name
    left_before = _leftovers(out_dir)

    # A rerun into the same folder gives a bundle that loads and generates.
    write_bundle(*tiny_dirs, out_dir, SMALL, progress=False)
    manifest = read_manifest(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([MANIFEST, *(a.file for a in manifest.artifacts.values())])
    backend = OnnxBackend(out_dir, threads=1)
    assert len(generate(backend, [1, 2, 3], k=SMALL.k, max_new_tokens=6).tokens) == 6
    # A rerun removes the staging folders of the killed exports (their processes are gone).
    assert left_before and _leftovers(out_dir) == [], left_before

    # An export killed while it would replace that bundle leaves it whole.
    _kill(_export_process(tiny_dirs, out_dir), stage="[export 2/4]")
    assert read_manifest(out_dir) == manifest


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size_kib) -> a fresh tmpfs of that size (unmounted after the test)."""
    mounted = []

    def mount(size_kib: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def _pages(size: int) -> int:
    return -(-size // 4096)


@pytest.mark.slow
@pytest.mark.parametrize("room", ["none", "all-but-manifest"])  # the first write, and the last
def test_full_disk_export_fails_cleanly(tiny_dirs, tmpfs, shared_export, room):
    reference = shared_export(tiny_dirs, SMALL)  # the same export on a roomy disk: the sizes to leave room for
    sizes = {p.name: p.stat().st_size for p in reference.iterdir()}
    pages = {"none": 64,
             "target-graph": _pages(sizes["target.onnx"]) + 2,
             "all-but-manifest": sum(_pages(s) for n, s in sizes.items() if n != MANIFEST) + 1}[room]
    assert _pages(sizes[MANIFEST]) > 1  # "all-but-manifest" leaves too little room for the manifest
    mount = tmpfs(pages * 4)
    out_dir = mount / "bundle"
    with pytest.raises(BundleError) as e:  # one line naming the folder, not a stack trace from deep inside
        write_bundle(*tiny_dirs, out_dir, SMALL, progress=False)
    assert str(e.value).startswith(f"{out_dir}: No space left on device") and "another output folder" in str(e.value)
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    _not_a_bundle(out_dir)
    assert sorted(p.name for p in mount.iterdir()) == []  # no partial files left
