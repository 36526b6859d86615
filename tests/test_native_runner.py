"""The native (C++) runner (android_demo/native) against the Python pte backend: same tokens, clear errors.

The real runner is built once (cached by source hash under the cache folder, so later sessions
reuse it). Two bundles: the random tiny pair exported with the portable kernels (fp32, about 40 s),
whose generations run past the sliding window into the end of the cache; and the shipped pair's
demo bundle (XNNPACK, quantized: the quantized kernels must be linked), which the demo test
exports into the session's cache folder (conftest.demo_cache) and these tests reuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtp_edge.export.bundle import MANIFEST, PROGRAM_FILE, ExportSettings
from mtp_edge.export.manifest import SCHEMA_VERSION
from mtp_edge.runtime.native import build, validate
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.draft_policy import CostTable, DraftPolicy
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate

MTP_EDGE = str(Path(sys.executable).with_name("mtp-edge"))
K, CHUNK, MAX_SEQ = 3, 4, 40  # the tiny preset's sliding window is 8
GREEDY = SamplingConfig()
SAMPLING = SamplingConfig(temperature=0.8, top_p=0.95, seed=11)
TOP_K = SamplingConfig(temperature=1.3, top_k=20, seed=5)
COUPLED = SamplingConfig(temperature=0.8, top_p=0.95, seed=11, rule="coupled")
COUPLED_TOP_K = SamplingConfig(temperature=1.3, top_k=20, seed=5, rule="coupled")
# K = auto from one frozen table on both sides: at the prior acceptance (1/2) one draft pays, more do
# not; the random drafter's rejections then make plain rounds win, with a probe every 16 of them.
COSTS = CostTable(decode=1.0, draft_step=0.05, verify={2: 1.3, 3: 1.6, 4: 1.9})
# Drafting free and a verify of any length at half a decode: K = 3 every round, whatever the acceptance.
CHEAP = CostTable(decode=1.0, draft_step=0.0, verify={2: 0.5, 3: 0.5, 4: 0.5})
# Drafting almost free in one call (draft_chain_k), not step by step: the plans of 2 and 3 tokens are "call".
CALLS = CostTable(decode=1.0, draft_step=0.05, verify={2: 0.5, 3: 0.5, 4: 0.5}, draft_call={2: 0.001, 3: 0.001})


@pytest.fixture(scope="session")
def runner() -> Path:
    return build.build_runner(progress=False)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dirs, shared_export) -> Path:
    # The run's shared export (conftest.shared_export), test_export_pte's portable bundle.
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable",
                                                   quantize="none"))


# Every test here builds or runs the native runner (not in `make test-fast`). Under pytest-xdist the
# tests of the runner and of the tiny bundle run on one worker (test_android_bridge's too), the test
# of the shipped pair's bundle on the worker of the demo test, which exports that bundle.
pytestmark = pytest.mark.native
TINY = pytest.mark.xdist_group("tiny-portable")


@pytest.fixture(scope="module")
def shipped_bundle(demo_cache) -> Path:
    from mtp_edge.export.cache import cached_bundle
    from mtp_edge.models.shipped import default_pair_dir
    from mtp_edge.runtime.commands.demo import DEMO_EXPORT

    return cached_bundle(default_pair_dir(), root=demo_cache, settings=DEMO_EXPORT)


def _rand(seed: int, n: int, high: int = 512) -> list[int]:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _both(runner, bundle, prompts, cases, max_new_tokens):
    """(native results, python generations), case-major then prompt."""
    requests = [validate.request(p, k=k, max_new_tokens=max_new_tokens, sampling=s) for k, s in cases for p in prompts]
    ours = validate.run_requests(bundle, requests, runner=runner, timeout=300)
    backend = PteBackend(bundle)
    theirs = [generate(backend, p, k=k, max_new_tokens=max_new_tokens, sampling=s, eos_ids=backend.eos_ids)
              for k, s in cases for p in prompts]
    return ours, theirs


def _both_auto(runner, bundle, prompts, cases, max_new_tokens, costs=COSTS):
    """K = auto on both sides from the same frozen cost table; cases: (sampling, draft_p_min, max_k)."""
    requests = [validate.request(p, k="auto", max_new_tokens=max_new_tokens, sampling=s, draft_p_min=p_min, max_k=max_k,
                                 costs=costs) for s, p_min, max_k in cases for p in prompts]
    ours = validate.run_requests(bundle, requests, runner=runner, timeout=300)
    backend = PteBackend(bundle)
    bound = lambda max_k: min(backend.max_draft if max_k is None else max_k, backend.max_seq_len - 2)  # noqa: E731
    theirs = [generate(backend, p, k="auto", max_k=max_k, draft_p_min=p_min, max_new_tokens=max_new_tokens, sampling=s,
                       eos_ids=backend.eos_ids, policy=DraftPolicy(costs, min(bound(max_k), costs.max_k), frozen=True))
              for s, p_min, max_k in cases for p in prompts]
    return ours, theirs


def _histogram(counts) -> dict[str, int]:
    return {str(k): n for k, n in counts.items() if n}


def _assert_same(ours, theirs):
    """Same tokens, same rounds, same draft length each round; with K = auto the same policy decisions."""
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.tokens == b.tokens, f"generation {i}"
        s = b.stats
        assert (a.stats["stop_reason"], a.stats["rounds"], a.stats["drafted"], a.stats["accepted"], a.stats["new_tokens"]) == (
            s.stop_reason, s.rounds, s.drafted, s.accepted, s.new_tokens), f"generation {i}"
        assert (a.stats["k_histogram"], a.stats["plain_rounds"], a.stats["early_stops"], a.stats["draft_calls"]) == (
            _histogram(s.k_histogram), s.k_histogram.get(0, 0), s.early_stops, s.draft_calls), f"generation {i}"
        if s.policy is None:
            assert a.stats["policy"] is None, f"generation {i}"
        else:  # the same plans, the same acceptance estimate bit for bit, the same (frozen) table
            assert a.stats["policy"] == {**s.policy, "k_histogram": _histogram(s.policy["k_histogram"])}, f"generation {i}"


@TINY
def test_tiny_pair_native_tokens_equal_python(runner, tiny_bundle):
    prompts = [_rand(10 + n, n) for n in (1, 6, 13)]
    cases = [(K, GREEDY), (K, SAMPLING), (K, TOP_K), (0, GREEDY), (0, SAMPLING)]
    ours, theirs = _both(runner, tiny_bundle, prompts, cases, max_new_tokens=2 * MAX_SEQ)  # into the end of the cache
    _assert_same(ours, theirs)
    spec, plain = ours[:3], ours[9:12]
    assert [r.tokens for r in spec] == [r.tokens for r in plain]  # greedy speculative is lossless natively too
    assert all(r.stats["stop_reason"] in ("cache_full", "eos") for r in ours)
    assert any(r.stats["stop_reason"] == "cache_full" for r in spec)
    assert sum(r.stats["drafted"] - r.stats["accepted"] for r in spec) > 0  # the random drafter was rejected
    for r in ours:
        assert r.stats["decode_s"] >= r.stats["decode_methods_s"] >= 0 and r.stats["runner_s"] >= 0


@TINY
def test_tiny_pair_auto_native_equals_python(runner, tiny_bundle):
    """K = auto, both sides deciding from one frozen table: the same draft length every round, the same
    early stops (the drafter's top probability against --draft-p-min), the same tokens."""
    prompts = [_rand(20 + n, n) for n in (1, 6, 13)]
    cases = [(GREEDY, None, None), (GREEDY, 0.0, None), (GREEDY, 0.0, 2), (SAMPLING, None, None), (SAMPLING, 0.0, None),
             (TOP_K, 0.3, None), (COUPLED, None, None), (COUPLED, 0.0, None), (COUPLED_TOP_K, 0.3, 2)]
    ours, theirs = _both_auto(runner, tiny_bundle, prompts, cases, max_new_tokens=2 * MAX_SEQ)
    _assert_same(ours, theirs)
    n = len(prompts)
    for r in ours:
        assert r.stats["policy"]["frozen"] and r.stats["policy"]["cost_source"] == "given"
        assert r.stats["policy"]["costs"] == COSTS.to_json()
    never_stopped = ours[:5 * n] + ours[6 * n:8 * n]  # no draft_p_min, or 0: only the policy decides
    assert all(r.stats["early_stops"] == 0 for r in never_stopped)
    assert sum(r.stats["drafted"] for r in never_stopped) > 0 and sum(r.stats["plain_rounds"] for r in never_stopped) > 0
    assert sum(r.stats["policy"]["probe_rounds"] for r in never_stopped) > 0
    assert all(int(d) <= 2 for r in ours[2 * n:3 * n] + ours[8 * n:] for d in r.stats["k_histogram"])  # max_k = 2
    assert sum(r.stats["early_stops"] for r in ours[5 * n:6 * n] + ours[8 * n:]) > 0  # draft_p_min = 0.3
    cheap, theirs = _both_auto(runner, tiny_bundle, prompts, [(GREEDY, None, None), (SAMPLING, None, None),
                                                              (TOP_K, None, None)], 2 * MAX_SEQ, costs=CHEAP)
    _assert_same(cheap, theirs)
    drafted = {d for r in cheap for d, rounds in r.stats["k_histogram"].items() if rounds}
    assert {"1", "2"} <= drafted and all(r.stats["policy"]["k_histogram"] == {"3": r.stats["rounds"]} for r in cheap)

    # Greedy output does not depend on K; coupled sampling's neither: auto == K = 0 == K, natively.
    plain = validate.run_requests(tiny_bundle, [validate.request(p, k=k, max_new_tokens=2 * MAX_SEQ, sampling=s)
                                                for k, s in [(0, GREEDY), (0, COUPLED), (K, COUPLED), (0, COUPLED_TOP_K)]
                                                for p in prompts], runner=runner, timeout=300)
    greedy0, coupled0, coupled_k, coupled_top_k0 = (plain[i * n:(i + 1) * n] for i in range(4))
    for auto in (ours[:n], ours[n:2 * n], ours[2 * n:3 * n]):
        assert [r.tokens for r in auto] == [r.tokens for r in greedy0]
    for same in (ours[6 * n:7 * n], ours[7 * n:8 * n], coupled_k):
        assert [r.tokens for r in same] == [r.tokens for r in coupled0]
    assert [r.tokens for r in ours[8 * n:]] == [r.tokens for r in coupled_top_k0]
    assert sum(r.stats["drafted"] for r in coupled_k) > 0


@TINY
def test_tiny_pair_auto_without_a_table(runner, tiny_bundle):
    """No table given: greedy times its own calls (warm-up, then live; tokens still those of K = 0); seeded
    rejection sampling decides from the fixed default table, as Python does, so it repeats exactly."""
    prompts = [_rand(30 + n, n) for n in (2, 9)]
    requests = [validate.request(p, k="auto", max_new_tokens=30, sampling=s) for s in (GREEDY, SAMPLING) for p in prompts]
    requests += [validate.request(p, k=0, max_new_tokens=30) for p in prompts]
    requests += [{"prompt": prompts[0], "max_new_tokens": 30}]  # k defaults to auto
    ours = validate.run_requests(tiny_bundle, requests, runner=runner, timeout=300)
    greedy, seeded, plain, default = ours[:2], ours[2:4], ours[4:6], ours[6]
    assert [r.tokens for r in greedy] == [r.tokens for r in plain] and default.tokens == plain[0].tokens
    for r in greedy + [default]:
        policy = r.stats["policy"]
        assert policy["cost_source"] == "measured" and not policy["frozen"]
        assert sorted(policy["costs"]["verify"]) == ["2", "3", "4"] and policy["costs"]["decode"] > 0
    backend = PteBackend(tiny_bundle)
    theirs = [generate(backend, p, k="auto", max_new_tokens=30, sampling=SAMPLING, eos_ids=backend.eos_ids) for p in prompts]
    _assert_same(seeded, theirs)
    assert all(r.stats["policy"]["cost_source"] == "default" and r.stats["policy"]["frozen"] for r in seeded)


def _chained(stats, chains=None) -> int:
    """Rounds that drafted a length the bundle has a one-call draft for (`chains`, default 2..K): those a
    greedy run without early stops drafts in one call."""
    return sum(n for d, n in stats["k_histogram"].items() if (int(d) >= 2 if chains is None else int(d) in chains))


@TINY
def test_tiny_pair_drafts_in_one_call(runner, tiny_bundle):
    """The export's draft_chain_2..K (k greedy drafter steps in one call): greedy rounds of a fixed K use
    them, natively as in Python, with the tokens of plain decoding; sampling never does. K = auto uses them
    where its plan says "call" (a frozen table that makes calls cheap), and a shrunk round the chain of its
    own length; a draft_p_min cuts a one-call draft before the first step whose top probability is below it."""
    assert PteBackend(tiny_bundle).draft_chains == frozenset(range(2, K + 1))
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    assert all(f"draft_chain_{n}" in manifest["methods"] for n in range(2, K + 1))
    prompts = [_rand(40 + n, n) for n in (1, 7, 12)]
    n = len(prompts)
    ours, theirs = _both(runner, tiny_bundle, prompts, [(K, GREEDY), (2, GREEDY), (K, SAMPLING), (0, GREEDY)], 2 * MAX_SEQ)
    _assert_same(ours, theirs)
    greedy, greedy2, sampled, plain = (ours[i * n:(i + 1) * n] for i in range(4))
    for r in greedy + greedy2:  # every round of 2+ tokens was one call (no draft_p_min: none stops early)
        assert r.stats["draft_calls"] == _chained(r.stats) and r.stats["early_stops"] == 0
    assert sum(r.stats["draft_calls"] for r in greedy) > 0
    assert [r.tokens for r in greedy] == [r.tokens for r in greedy2] == [r.tokens for r in plain]
    assert all(r.stats["draft_calls"] == 0 for r in sampled + plain)

    # K = auto deciding from one frozen table on both sides: the same plans ("call" included), tokens, early stops.
    cases = [(GREEDY, None, None), (GREEDY, None, 2), (GREEDY, 0.2, None), (SAMPLING, None, None), (COUPLED, None, None)]
    auto, theirs = _both_auto(runner, tiny_bundle, prompts, cases, 2 * MAX_SEQ, costs=CALLS)
    _assert_same(auto, theirs)
    greedy, greedy2, stopped, sampled, coupled = (auto[i * n:(i + 1) * n] for i in range(5))
    for r in greedy + greedy2:
        assert r.stats["draft_calls"] == _chained(r.stats) > 0
        assert r.stats["policy"]["costs"]["draft_call"] == {"2": 0.001, "3": 0.001}
    assert [r.tokens for r in greedy] == [r.tokens for r in greedy2] == [r.tokens for r in plain]
    assert all(int(d) <= 2 for r in greedy2 for d in r.stats["k_histogram"])
    assert sum(r.stats["draft_calls"] for r in stopped) > 0 and sum(r.stats["early_stops"] for r in stopped) > 0
    assert [r.tokens for r in stopped] == [r.tokens for r in plain]
    assert all(r.stats["draft_calls"] == 0 for r in sampled + coupled)  # sampling drafts step by step
    assert sum(r.stats["drafted"] for r in sampled + coupled) > 0


@TINY
def test_tiny_pair_measures_its_one_call_drafts(runner, tiny_bundle):
    """Without a table the warm-up times each draft_chain_k (draft_call) and a greedy run weighs them; a
    coupled-rule run (sampling: steps only) weighs none but leaves them in the runner's table for the next
    greedy run, as tuning.make_policy / remember do. The tokens stay those of plain decoding."""
    prompt = _rand(50, 5)
    requests = [validate.request(prompt, k="auto", max_new_tokens=30, sampling=s) for s in (GREEDY, COUPLED, GREEDY)]
    requests += [validate.request(prompt, k=0, max_new_tokens=30)]
    first, coupled, again, plain = validate.run_requests(tiny_bundle, requests, runner=runner, timeout=300)
    for r in (first, again):
        assert r.tokens == plain.tokens and r.stats["policy"]["cost_source"] == "measured"
        assert sorted(r.stats["policy"]["costs"]["draft_call"]) == ["2", "3"]
        assert all(s > 0 for s in r.stats["policy"]["costs"]["draft_call"].values())
    assert coupled.stats["policy"]["costs"]["draft_call"] == {} and coupled.stats["draft_calls"] == 0


@pytest.fixture
def chainless_bundle(bundle_copy) -> Path:
    """The tiny bundle as an export from before draft_chain_k: its manifest lists no such method (the
    manifest is not hashed, and its K, context and vocabulary still match the program)."""
    path = bundle_copy / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["methods"] = {name: sig for name, sig in manifest["methods"].items() if not name.startswith("draft_chain_")}
    path.write_text(json.dumps(manifest))
    return bundle_copy


@TINY
def test_a_bundle_without_one_call_drafts_drafts_step_by_step(runner, tiny_bundle, chainless_bundle):
    assert PteBackend(chainless_bundle).draft_chains == frozenset()
    prompts = [_rand(60 + n, n) for n in (3, 8)]
    n = len(prompts)
    ours, theirs = _both(runner, chainless_bundle, prompts, [(K, GREEDY), (0, GREEDY)], 2 * MAX_SEQ)
    _assert_same(ours, theirs)
    assert all(r.stats["draft_calls"] == 0 for r in ours) and sum(_chained(r.stats) for r in ours[:n]) > 0
    assert [r.tokens for r in ours[:n]] == [r.tokens for r in ours[n:]]
    # A table that plans "call" still works: the rounds draft step by step, as in Python.
    auto, theirs = _both_auto(runner, chainless_bundle, prompts, [(GREEDY, None, None)], 2 * MAX_SEQ, costs=CALLS)
    _assert_same(auto, theirs)
    assert all(r.stats["draft_calls"] == 0 for r in auto) and sum(_chained(r.stats) for r in auto) > 0
    assert [r.tokens for r in auto] == [r.tokens for r in ours[n:]]
    measured = validate.run_requests(chainless_bundle, [validate.request(prompts[0], k="auto", max_new_tokens=20)], runner=runner)[0]
    assert measured.stats["policy"]["costs"]["draft_call"] == {} and measured.stats["draft_calls"] == 0
    assert measured.tokens == ours[n].tokens[:20]


@pytest.mark.xdist_group("shipped-demo")
def test_shipped_pair_native_tokens_equal_python(runner, shipped_bundle):
    from mtp_edge.models.shipped import heldout_prompts

    prompts = [p["ids"] for p in heldout_prompts()[:3]]
    cases = [(4, GREEDY), (4, SAMPLING), (0, GREEDY)]
    ours, theirs = _both(runner, shipped_bundle, prompts, cases, max_new_tokens=48)
    _assert_same(ours, theirs)
    assert [r.tokens for r in ours[:3]] == [r.tokens for r in ours[6:9]]
    assert sum(r.stats["accepted"] for r in ours[:3]) > 0  # the trained drafter is accepted
    chains = PteBackend(shipped_bundle).draft_chains  # the demo's: draft_chain_2 (DEMO_EXPORT)
    # Greedy rounds of a length with a one-call draft are drafted in one call, the others step by step.
    assert all(r.stats["draft_calls"] == _chained(r.stats, chains) for r in ours[:3])
    # K = auto from one frozen table measured here: the same decisions natively, greedy still K = 0's tokens.
    backend = PteBackend(shipped_bundle)
    costs = validate.frozen_costs(shipped_bundle, backend, backend.max_draft)[0]
    auto, theirs = _both_auto(runner, shipped_bundle, prompts, [(GREEDY, None, None), (SAMPLING, None, None),
                                                                (COUPLED, None, None)], 48, costs=costs)
    _assert_same(auto, theirs)
    assert [r.tokens for r in auto[:3]] == [r.tokens for r in ours[6:9]]
    assert sum(r.stats["drafted"] for r in auto[:3]) > 0


@TINY
def test_c_api_gives_the_cli_tokens(runner, tiny_bundle):
    """c_api_example drives mtp_edge_runner.h from plain C, as the JNI bridge will."""
    prompt = _rand(3, 5)
    cli = validate.run_requests(tiny_bundle, [validate.request(prompt, k=K, max_new_tokens=20)], runner=runner)[0]
    done = subprocess.run([str(runner.with_name("c_api_example")), str(tiny_bundle), str(K), "20", *map(str, prompt)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    tokens, tail, histogram = done.stdout.splitlines()
    assert [int(t) for t in tokens.split()] == cli.tokens
    assert tail == f"{cli.stats['stop_reason']} {len(cli.tokens)}"  # every token went through the callback
    assert histogram == "k_histogram " + " ".join(f"{d}:{n}" for d, n in cli.stats["k_histogram"].items())
    # K = auto through the C API, its cost table frozen: the CLI's draft lengths round by round.
    cli = validate.run_requests(tiny_bundle, [validate.request(prompt, k="auto", max_new_tokens=20, costs=COSTS)],
                                runner=runner)[0]
    done = subprocess.run([str(runner.with_name("c_api_example")), str(tiny_bundle), "auto", "20", *map(str, prompt)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "MTP_EDGE_COSTS": json.dumps(COSTS.to_json())})
    assert done.returncode == 0, done.stderr
    tokens, _, histogram = done.stdout.splitlines()
    assert [int(t) for t in tokens.split()] == cli.tokens
    assert histogram == "k_histogram " + " ".join(f"{d}:{n}" for d, n in cli.stats["k_histogram"].items())
    done = subprocess.run([str(runner.with_name("c_api_example")), str(tiny_bundle / "nowhere"), "1", "4", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a folder" in done.stderr.splitlines()[-1]


@TINY
def test_validate_command(tiny_bundle):
    done = subprocess.run([MTP_EDGE, "validate", str(tiny_bundle), "--json", "--max-new-tokens", "24", "--num-prompts", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["native_speculative_equals_plain"]
    assert [c["case"] for c in report["cases"]] == [f"greedy K={K}", f"sampling K={K}", "greedy K=0", "greedy K=auto",
                                                   "sampling K=auto", "coupled K=auto", "coupled K=0"]
    assert all(c["token_identical"] and c["identical"] == 2 and c["k_histograms_identical"] for c in report["cases"])
    assert report["native_auto_equals_plain"] and report["native_coupled_auto_equals_plain"]
    assert report["cost_source"] == "measured" and sorted(report["cost_table"]["verify"]) == ["2", "3", "4"]
    assert all(c["native_tokens_per_s"] > 0 and c["python_tokens_per_s"] > 0 for c in report["cases"])


# --------------------------------------------------------------------------- errors: one line, exit code 2, never a crash


def _run(runner, *args, requests: list[dict] | None = None) -> subprocess.CompletedProcess:
    text = "".join(json.dumps(r) + "\n" for r in requests or [])
    return subprocess.run([str(runner), *map(str, args)], input=text, capture_output=True, text=True, timeout=120)


def _error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)  # a crash would be a negative code (signal)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr
    return last


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    return copy


@TINY
def test_missing_bundle(runner, tmp_path):
    msg = _error(_run(runner, tmp_path / "nowhere"))
    assert "nowhere: not a folder. Pass a bundle folder written by `mtp-edge export`." in msg
    (tmp_path / "empty").mkdir()
    assert "no manifest.json; not a bundle, or its export was interrupted" in _error(_run(runner, tmp_path / "empty"))


@TINY
def test_modified_program_is_refused(runner, bundle_copy):
    path = bundle_copy / PROGRAM_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))
    msg = _error(_run(runner, bundle_copy))
    assert "artifact model.pte was modified after export (sha256 does not match manifest.json); export the bundle again." in msg


@TINY
def test_unknown_schema_version_is_refused(runner, bundle_copy):
    path = bundle_copy / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    msg = _error(_run(runner, bundle_copy))
    assert f"bundle schema_version 99 is not supported; this runner reads schema_version {SCHEMA_VERSION}" in msg


def _relist_program(folder: Path) -> None:
    """Update the manifest's sha256 and size of model.pte after a test replaced it (to reach the checks past the hash)."""
    import hashlib

    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    data = (folder / PROGRAM_FILE).read_bytes()
    manifest["artifacts"]["program"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.write_text(json.dumps(manifest))


@TINY
def test_a_program_without_runtime_metadata_is_refused(runner, bundle_copy):
    """A schema 2 bundle (no constant methods in its program): refused with the fix, by both runtimes."""
    from executorch.exir import to_edge

    from mtp_edge.export.bundle import BundleError

    class Old(torch.nn.Module):
        def forward(self, x):
            return x + 1

    program = to_edge(torch.export.export(Old(), (torch.ones(1),))).to_executorch()
    (bundle_copy / PROGRAM_FILE).write_bytes(program.buffer)
    _relist_program(bundle_copy)
    fix = "it was exported before bundle schema 3 (which added it). Re-export the bundle with this version of mtp-edge."
    assert "the program has no runtime metadata (constant method(s) get_schema_version, get_k," in _error(_run(runner, bundle_copy))
    assert fix in _error(_run(runner, bundle_copy))
    with pytest.raises(BundleError, match="the program has no runtime metadata") as e:
        PteBackend(bundle_copy)
    assert fix in str(e.value)
    path = bundle_copy / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 2
    path.write_text(json.dumps(manifest))
    assert "schema_version 2 is not supported (schema 2 programs carry no runtime metadata" in _error(_run(runner, bundle_copy))


@TINY
@pytest.mark.parametrize("field, lie, told", [
    ("context", lambda m: m["cache"].update(max_seq_len=MAX_SEQ // 2), f"max_seq_len = {MAX_SEQ // 2}, but the program was exported with {MAX_SEQ}"),
    ("eos", lambda m: m.update(eos_token_ids=[7, 8]), "eos_ids = [7, 8], but the program was exported with ["),
])
def test_a_manifest_that_lies_is_caught_before_any_method_runs(runner, bundle_copy, field, lie, told):
    from mtp_edge.export.bundle import BundleError

    path = bundle_copy / MANIFEST
    manifest = json.loads(path.read_text())
    lie(manifest)
    path.write_text(json.dumps(manifest))
    assert told in _error(_run(runner, bundle_copy))
    with pytest.raises(BundleError, match="the manifest was edited or belongs to another export") as e:
        PteBackend(bundle_copy)
    assert told in str(e.value)


@TINY
def test_requests_the_bundle_cannot_serve(runner, tiny_bundle):
    msg = _error(_run(runner, tiny_bundle, requests=[{"prompt": [1] * MAX_SEQ, "k": 0}]))
    assert f"the prompt has {MAX_SEQ} tokens but the cache holds {MAX_SEQ} positions" in msg
    msg = _error(_run(runner, tiny_bundle, requests=[{"prompt": [1, 2], "k": K + 1}]))
    assert f"K={K + 1} is not available on this bundle: it was built for K <= {K}." in msg
    msg = _error(_run(runner, tiny_bundle, requests=[{"prompt": [1, 512]}]))
    assert "prompt token id 512 is outside the vocabulary [0, 512)." in msg
    msg = _error(_run(runner, tiny_bundle, requests=[{"prompt": [1], "top_p": 0}]))
    assert "top_p must be in (0, 1], got 0.0." in msg
    # The K = auto fields and the sampling rule, with the Python runtime's wording where it checks the same.
    bad = {"k": "K (draft tokens per round) must be a whole number or 'auto'.",
           "rule": "sampling rule 'gumbel' is unknown; choose from rejection, coupled.",
           "max_k": f"max_k must be in 0..{K} on this bundle, got {K + 1}.",
           "draft_p_min": "draft_p_min must be a probability in [0, 1], got 1.5.",
           "costs": "cost table: missing field(s) draft_step, verify.",
           "verify": "cost table: verify is missing length(s) 3: give seconds for every length 2..4."}
    fields = {"k": "fast", "rule": "gumbel", "max_k": K + 1, "draft_p_min": 1.5, "costs": {"decode": 1.0},
              "verify": {"decode": 1.0, "draft_step": 0.0, "verify": {"2": 1.0, "4": 1.0}}}
    for name, message in bad.items():
        request = {"prompt": [1], "k": "auto", **{("costs" if name == "verify" else name): fields[name]}}
        assert message in _error(_run(runner, tiny_bundle, requests=[request])), name


@TINY
def test_bad_request_lines_name_the_line(runner, tiny_bundle):
    done = _run(runner, tiny_bundle, requests=[{"prompt": [1, 2], "max_new_tokens": 3}, {"prompt": [1], "temp": 1}])
    assert "request line 2: unknown field \"temp\"" in _error(done)
    assert len(done.stdout.splitlines()) == 1  # the first request's result was written before the error
    done = subprocess.run([str(runner), str(tiny_bundle)], input="{\"prompt\": [1,]}\n", capture_output=True, text=True, timeout=60)
    assert "request line 1: not valid JSON" in _error(done)


@TINY
def test_python_wrapper_raises_the_runner_message(runner, tiny_bundle):
    with pytest.raises(build.NativeError, match=f"cache holds {MAX_SEQ} positions") as e:
        validate.run_requests(tiny_bundle, [{"prompt": [1] * MAX_SEQ}], runner=runner)
    assert e.value.returncode == 2


def test_validate_command_errors(tmp_path):
    done = subprocess.run([MTP_EDGE, "validate", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mtp-edge validate: error: argument BUNDLE_DIR: ")
    assert "nowhere: no such file or folder; give a bundle folder written by `mtp-edge export`" in done.stderr


def test_build_key_follows_the_sources(tmp_path, monkeypatch):
    copy = tmp_path / "native"
    shutil.copytree(build.source_dir(), copy)
    before = build.source_hash(copy)
    assert build.source_hash(copy) == before
    (copy / "runner.cpp").write_text((copy / "runner.cpp").read_text() + "\n// changed\n")
    assert build.source_hash(copy) != before
    monkeypatch.setenv("MTP_EDGE_NATIVE_SRC", str(tmp_path / "nowhere"))
    with pytest.raises(build.NativeError, match="native runner's sources"):
        build.source_dir()
