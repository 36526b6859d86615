"""ONNX export: target.onnx + drafter.onnx over one KV cache that ONNX Runtime sessions share.

One ONNX bundle of the random tiny pair (sliding window 8) is exported per run (a few
seconds); every check below reads it through real onnxruntime sessions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hypothesis import HealthCheck, given, settings

from backends_for_tests import ScriptedDrafts, assert_greedy_auto_is_plain, auto_cases
from mtp_edge.export import onnx as onnx_export
from mtp_edge.export.bundle import (COPIED_FROM_TARGET, MANIFEST, SCHEMA_VERSION, BundleError, ExportSettings, read_manifest,
                                    write_bundle)
from mtp_edge.models import load_pair
from mtp_edge.runtime.backends import open_bundle
from mtp_edge.runtime.backends.eager import EagerBackend
from mtp_edge.runtime.backends.onnx import OnnxBackend
from mtp_edge.runtime.errors import GenerationError
from mtp_edge.runtime.speculative import generate

K, CHUNK, MAX_SEQ = 3, 4, 40
# fp32 ONNX Runtime vs eager PyTorch on this pair: differences come from summation order only.
ATOL, RTOL = 2e-4, 1e-4


def _rand(seed: int, n: int, high: int = 512) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def bundle(tiny_dirs, shared_export):
    # Exported once per run (conftest.shared_export); the tests reading it carry its xdist group.
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, formats="onnx",
                                                   quantize="none"))


SHARED_BUNDLE = pytest.mark.xdist_group("tiny-onnx")


@pytest.fixture(scope="module")
def onnx_backend(bundle):
    return OnnxBackend(bundle, threads=1)


@pytest.fixture(scope="module")
def eager(tiny_dirs):
    return EagerBackend(*load_pair(*tiny_dirs, max_seq_len=MAX_SEQ), max_draft=K)


# --------------------------------------------------------------------------- graphs and manifest


@SHARED_BUNDLE
def test_graphs_pass_the_checker_and_match_the_manifest(bundle, tiny_dirs):
    manifest = read_manifest(bundle).to_json()
    assert manifest["formats"] == ["onnx"] and "methods" not in manifest
    # What the target checkpoint has of the files a bundle copies (transformers wrote config.json at least).
    copied = {role for role, name in COPIED_FROM_TARGET.items() if (tiny_dirs[0] / name).exists()}
    assert "hf_config" in copied
    assert set(manifest["artifacts"]) == {"onnx_target", "onnx_drafter"} | copied
    for role in copied:
        assert (bundle / COPIED_FROM_TARGET[role]).read_bytes() == (tiny_dirs[0] / COPIED_FROM_TARGET[role]).read_bytes()
    for role in ("target", "drafter"):
        contract = manifest["onnx"][role]
        path = bundle / contract["file"]
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert contract["opset"] >= 18
        assert any(o.domain in ("", "ai.onnx") and o.version == contract["opset"] for o in model.opset_import)
        # The manifest's contract is what ONNX Runtime sees: names, shapes (dynamic dims by name), dtypes.
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for declared, found in ((contract["inputs"], session.get_inputs()), (contract["outputs"], session.get_outputs())):
            assert [d["name"] for d in declared] == [f.name for f in found]
            assert [d["shape"] for d in declared] == [list(f.shape) for f in found]
            assert [f"tensor({d['dtype'].replace('float32', 'float')})" for d in declared] == [f.type for f in found]
    cache = {b["name"]: b for b in manifest["cache"]["buffers"]}
    target, drafter = manifest["onnx"]["target"], manifest["onnx"]["drafter"]
    # Every cache buffer is a target input, the drafter's are the store layers', shapes as in the cache layout.
    assert set(target["cache_inputs"].values()) == set(cache)
    assert set(drafter["cache_inputs"].values()) < set(cache)
    store = {f"target.cache.{kind}_{layer}" for layer in manifest["cache"]["store_layers"].values() for kind in "kv"}
    assert set(drafter["cache_inputs"].values()) == store
    for contract in (target, drafter):
        shapes = {i["name"]: i["shape"] for i in contract["inputs"]}
        for graph_input, buffer in contract["cache_inputs"].items():
            assert shapes[graph_input] == cache[buffer]["shape"]
    assert set(target["new_rows_outputs"].values()) == set(cache)
    tokens_dim = target["inputs"][0]["shape"][1]
    for output in target["outputs"]:
        if output["name"] in target["new_rows_outputs"]:
            buffer = cache[target["new_rows_outputs"][output["name"]]]["shape"]
            assert output["shape"] == [buffer[0], buffer[1], tokens_dim, buffer[3]]


@SHARED_BUNDLE
def test_cache_inputs_feed_only_matmuls(bundle):
    """Inside both graphs the cache is read by matmuls directly: no node copies, concatenates,
    transposes or scatters a cache tensor."""
    for name in (onnx_export.TARGET_FILE, onnx_export.DRAFTER_FILE):
        model = onnx.load(str(bundle / name), load_external_data=False)
        cache = {i.name for i in model.graph.input if i.name.startswith("cache_")}
        consumers = {node.op_type for node in model.graph.node for i in node.input if i in cache}
        assert cache and consumers == {"MatMul"}, (name, consumers)


# --------------------------------------------------------------------------- parity


@SHARED_BUNDLE
def test_graphs_match_eager(onnx_backend, eager):
    prompt = _rand(1, 10)  # chunks of 4, 4 and 2 tokens: the graph takes any T
    for backend_out, eager_out in zip(onnx_backend.prefill(prompt), eager.prefill(prompt)):
        _close(backend_out, eager_out)
    tokens = _rand(2, K + 1)
    for n in (K + 1, 2, 1):
        for backend_out, eager_out in zip(onnx_backend.verify(tokens[:n], 10), eager.verify(tokens[:n], 10)):
            assert backend_out.shape[0] == n
            _close(backend_out, eager_out)
    _, hidden = eager.verify(tokens[:1], 10)
    hidden_o = hidden_e = hidden[0]
    token = int(tokens[0])
    for _ in range(3):
        out_o = onnx_backend.draft(token, hidden_o, 11, 11)
        out_e = eager.draft(token, hidden_e, 11, 11)
        assert torch.equal(out_o.candidate_ids, out_e.candidate_ids)
        _close(out_o.candidate_logits, out_e.candidate_logits)
        _close(out_o.hidden, out_e.hidden)
        token = int(out_e.candidate_ids[out_e.candidate_logits.argmax()])
        hidden_o, hidden_e = out_o.hidden, out_e.hidden


@SHARED_BUNDLE
@pytest.mark.parametrize("prompt_len", [1, 6, 13])
def test_greedy_generation_matches_target_only_and_eager(onnx_backend, eager, prompt_len):
    prompt = _rand(10 + prompt_len, prompt_len).tolist()
    budget = 2 * MAX_SEQ  # to the end of the cache: rounds shrink near it
    spec = generate(onnx_backend, prompt, k=K, max_new_tokens=budget)
    plain = generate(onnx_backend, prompt, k=0, max_new_tokens=budget)
    reference = generate(eager, prompt, k=0, max_new_tokens=budget)
    assert spec.tokens == plain.tokens == reference.tokens
    assert spec.stats.stop_reason == plain.stats.stop_reason == "cache_full"
    assert prompt_len + len(spec.tokens) > 3 * 8  # well past the sliding window
    assert spec.stats.drafted > spec.stats.accepted  # the random drafter was rejected
    assert any(0 < r.drafted < K for r in spec.stats.round_log)


@SHARED_BUNDLE
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**auto_cases())
def test_greedy_auto_equals_plain_on_onnx(onnx_backend, **case):
    """k="auto" on the ONNX graphs: any cost table and acceptance history, plain decoding's tokens."""
    assert_greedy_auto_is_plain(onnx_backend, **case)


@SHARED_BUNDLE
def test_long_accepts_and_rejections(onnx_backend):
    """Mostly right drafts with planted mistakes: rollback past the window over the shared cache."""
    prompt = _rand(7, 5).tolist()
    plain = generate(onnx_backend, prompt, k=0, max_new_tokens=MAX_SEQ)
    scripted = ScriptedDrafts(onnx_backend, prompt + plain.tokens, wrong_at={9, 10, 17, 26, 30})
    spec = generate(scripted, prompt, k=K, max_new_tokens=MAX_SEQ)
    assert spec.tokens == plain.tokens
    assert spec.stats.accepted >= 20 and spec.stats.accepted < spec.stats.drafted


# --------------------------------------------------------------------------- the shared cache


@SHARED_BUNDLE
def test_both_sessions_read_one_cache_allocation(bundle, eager):
    backend = OnnxBackend(bundle, threads=1)
    manifest = backend.manifest
    target, drafter = backend.bound_cache["target"], backend.bound_cache["drafter"]
    aliases = manifest.onnx["drafter"].cache_inputs
    assert aliases
    for graph_input, buffer in aliases.items():
        pointer = backend.cache[buffer].__array_interface__["data"][0]
        assert drafter[graph_input].data_ptr() == target[graph_input].data_ptr() == pointer
    # The drafter reads what the target wrote: K/V rows the verify pass returned, copied into the
    # shared arrays. Zeroing those arrays (no rebinding) changes the draft; restoring them restores it.
    tokens = _rand(3, K + 1)
    _, hidden = backend.verify(tokens, 0)
    first = backend.draft(5, hidden[-1], K + 1, K + 1)
    _, eager_hidden = eager.verify(tokens, 0)
    expected = eager.draft(5, eager_hidden[-1], K + 1, K + 1)
    assert torch.equal(first.candidate_ids, expected.candidate_ids)
    _close(first.hidden, expected.hidden)
    saved = {name: array.copy() for name, array in backend.cache.items()}
    for array in backend.cache.values():
        array[...] = 0
    zeroed = backend.draft(5, hidden[-1], K + 1, K + 1)
    assert (zeroed.hidden - first.hidden).abs().max() > 100 * ATOL
    for name, array in backend.cache.items():
        array[...] = saved[name]
    _close(backend.draft(5, hidden[-1], K + 1, K + 1).hidden, first.hidden)


@SHARED_BUNDLE
def test_bytes_copied_per_round_are_the_new_rows(bundle):
    backend = OnnxBackend(bundle, threads=1)
    cache = backend.manifest.cache.buffers
    row_bytes = sum(b.shape[1] * b.shape[3] * 4 for b in cache)  # one position of every cache tensor
    backend.prefill(_rand(4, 9))
    assert backend.bytes_copied == 9 * row_bytes
    prompt = _rand(5, 6).tolist()
    spec = generate(backend, prompt, k=K, max_new_tokens=20)
    copied = backend.bytes_copied - 9 * row_bytes
    verified = sum(r.drafted + 1 for r in spec.stats.round_log)
    assert copied == (len(prompt) + verified) * row_bytes
    per_round = (copied - len(prompt) * row_bytes) / spec.stats.rounds
    assert per_round <= (K + 1) * row_bytes
    assert row_bytes * MAX_SEQ < sum(np.prod(b.shape) * 4 for b in cache)  # a round never copies a whole buffer


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


@SHARED_BUNDLE
@pytest.mark.parametrize("name", [onnx_export.TARGET_FILE, onnx_export.DRAFTER_FILE])
def test_tampered_graph_is_refused(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name.replace('.', '[.]')} was modified after export"):
        OnnxBackend(bundle_copy)


@SHARED_BUNDLE
def test_damaged_graph_without_hash_check_is_a_clear_error(bundle_copy):
    path = bundle_copy / onnx_export.DRAFTER_FILE
    path.write_bytes(b"\xff" * path.stat().st_size)  # same size: only the skipped hash would notice
    with pytest.raises(BundleError, match=r"drafter\.onnx: ONNX Runtime could not load the graph") as e:
        OnnxBackend(bundle_copy, verify_hashes=False)
    assert "\n" not in str(e.value)


@SHARED_BUNDLE
def test_unknown_schema_version_and_missing_files(bundle_copy):
    path = bundle_copy / MANIFEST
    original = path.read_text()
    manifest = json.loads(original)
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"schema_version 99 is not supported"):
        OnnxBackend(bundle_copy)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["formats"] = ["onnx", "tflite"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"formats .* is not a list of pte, onnx"):
        OnnxBackend(bundle_copy)
    path.write_text(original)
    (bundle_copy / onnx_export.TARGET_FILE).unlink()
    with pytest.raises(BundleError, match=r"missing artifact target\.onnx"):
        OnnxBackend(bundle_copy)


@SHARED_BUNDLE
def test_a_bundle_without_the_format_says_how_to_get_it(bundle):
    from mtp_edge.runtime.backends.pte import PteBackend

    with pytest.raises(BundleError, match=r"holds onnx only, not pte.*--format onnx,pte"):
        PteBackend(bundle)
    assert isinstance(open_bundle(bundle), OnnxBackend)  # the bundle's own format by default


@SHARED_BUNDLE
def test_requests_beyond_the_export_are_refused(onnx_backend):
    with pytest.raises(GenerationError, match=rf"K={K + 1} is not available.*K <= {K}"):
        generate(onnx_backend, [1, 2, 3], k=K + 1, max_new_tokens=4)
    with pytest.raises(GenerationError, match="outside the exported context"):
        onnx_backend.prefill(torch.ones(MAX_SEQ + 1, dtype=torch.long))
    with pytest.raises(GenerationError, match="outside the exported context"):
        onnx_backend.verify(torch.ones(2, dtype=torch.long), MAX_SEQ - 1)
    with pytest.raises(GenerationError, match=rf"verify takes 1\.\.{K + 1} tokens"):
        onnx_backend.verify(torch.ones(K + 2, dtype=torch.long), 0)


@pytest.mark.slow
def test_external_data_bundle(tiny_dirs, tmp_path, eager):
    """Weights in .data files beside the graphs (automatic above 2 GB, forced here on the tiny pair)."""
    out = tmp_path / "external"
    write_bundle(*tiny_dirs, out, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, formats="onnx",
                                                 quantize="none", onnx_external_data=True), progress=False)
    manifest = read_manifest(out)
    data = sorted(a.file for role, a in manifest.artifacts.items() if role.startswith("onnx_data_"))
    assert len(data) == 2 and all(f.endswith(".data") for f in data)
    for role in ("target", "drafter"):
        path = out / manifest.onnx[role].file
        model = onnx.load(str(path), load_external_data=False)
        assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
        assert (out / f"{path.name}.data").stat().st_size > 0
        onnx.checker.check_model(str(path), full_check=True)
    prompt = _rand(30, 7).tolist()
    spec = generate(OnnxBackend(out, threads=1), prompt, k=K, max_new_tokens=20)
    assert spec.tokens == generate(eager, prompt, k=0, max_new_tokens=20).tokens
    data_file = out / data[0]
    blob = bytearray(data_file.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    data_file.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=rf"{data[0].replace('.', '[.]')} was modified after export"):
        OnnxBackend(out)
    data_file.unlink()
    with pytest.raises(BundleError, match=rf"missing artifact {data[0].replace('.', '[.]')}"):
        OnnxBackend(out)


# --------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_export_onnx_then_generate(tiny_dirs, tmp_path, eager):
    exe = str(Path(sys.executable).with_name("mtp-edge"))
    out = tmp_path / "bundle"
    # No --quantize: the default recipe, recorded in the manifest (for ONNX and a pair this small: none, so the
    # tokens are the fp32 pair's).
    done = subprocess.run([exe, "export", "--model", str(tiny_dirs[0]), "--drafter", str(tiny_dirs[1]), "--format", "onnx",
                           "--out", str(out), "--k", "2", "--max-seq-len", "32", "--prefill-chunk", "8"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "onnx_target" in done.stdout and "[export" in done.stderr  # progress on stderr
    from mtp_edge.quantize.recipes import decode_step_parameters, parse_recipe

    default = parse_recipe(None, "onnx", decode_step_parameters(tiny_dirs[0])).text()
    assert read_manifest(out).quantization.recipe == default == parse_recipe("none", "onnx").text()
    prompt = _rand(21, 5).tolist()
    done = subprocess.run([exe, "generate", "--bundle", str(out), "--backend", "onnx", "--threads", "1", "--json",
                           "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", "12", "--k", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == generate(eager, prompt, k=0, max_new_tokens=12).tokens
    done = subprocess.run([exe, "export", "--model", str(tiny_dirs[0]), "--drafter", str(tiny_dirs[1]),
                           "--format", "onnx,tflite", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("mtp-edge: error: unknown export format(s) ['tflite']")
    assert not (tmp_path / "x").exists()
    backend = OnnxBackend(out, threads=1)
    assert generate(backend, prompt, k=2, max_new_tokens=12).tokens == generate(backend, prompt, k=0, max_new_tokens=12).tokens
