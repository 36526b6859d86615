"""The native runner cross-built for ARM64 (aarch64 Linux) and run under qemu-aarch64 (native/arm64.py)
against the Python pte backend on this machine: `mtp-edge validate --arch arm64`.

The first run downloads the aarch64 ExecuTorch wheel (about 18 MB) into the cache folder and
cross-builds the runner (both cached, as the desktop build is). The bundle is test_native_runner's
tiny portable fp32 export, shared by the run (no export of its own): fp32 portable kernels give
the same tokens on ARM as on x86. The tools (g++-12-aarch64-linux-gnu, qemu-user) come from
`make arm64-tools`, which `make test` runs: without them these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtp_edge.export.bundle import ExportSettings
from mtp_edge.runtime.backends.pte import PteBackend
from mtp_edge.runtime.native import arm64, build, validate
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate

MTP_EDGE = str(Path(sys.executable).with_name("mtp-edge"))
K, CHUNK, MAX_SEQ = 3, 4, 40  # test_native_runner's tiny portable bundle (the same shared export)
GREEDY = SamplingConfig()
SAMPLING = SamplingConfig(temperature=0.8, top_p=0.95, seed=11)
EM_AARCH64 = 183

pytestmark = pytest.mark.native
ARM64 = pytest.mark.xdist_group("tiny-arm64")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dirs, shared_export) -> Path:
    return shared_export(tiny_dirs, ExportSettings(k=K, max_seq_len=MAX_SEQ, prefill_chunk=CHUNK, backend="portable",
                                                   quantize="none"))


@pytest.fixture(scope="module")
def arm64_runner() -> Path:
    return build.build_runner(progress=False, arch="arm64")


def _rand(seed: int, n: int, high: int = 512) -> list[int]:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@ARM64
def test_arm64_runner_tokens_equal_python(arm64_runner, tiny_bundle):
    header = arm64_runner.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64  # an aarch64 executable
    assert arm64_runner.parents[1].name.startswith("arm64-")  # its own cache folder beside the desktop build's
    argv, env, cpu = build.runner_command(arm64_runner, "arm64")
    assert Path(argv[0]).name == "qemu-aarch64" and env["QEMU_CPU"] == cpu and env["QEMU_LD_PREFIX"] == str(arm64.SYSROOT)

    prompts = [_rand(40 + n, n) for n in (1, 6, 13)]
    cases = [(K, GREEDY), (K, SAMPLING), (0, GREEDY), (0, SAMPLING)]
    max_new = 2 * MAX_SEQ  # past the sliding window into the end of the cache
    requests = [validate.request(p, k=k, max_new_tokens=max_new, sampling=s) for k, s in cases for p in prompts]
    ours = validate.run_requests(tiny_bundle, requests, runner=arm64_runner, arch="arm64", timeout=600)
    backend = PteBackend(tiny_bundle)
    theirs = [generate(backend, p, k=k, max_new_tokens=max_new, sampling=s, eos_ids=backend.eos_ids) for k, s in cases
              for p in prompts]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.tokens == b.tokens, f"generation {i}"
        assert (a.stats["rounds"], a.stats["drafted"], a.stats["accepted"], a.stats["stop_reason"]) == (
            b.stats.rounds, b.stats.drafted, b.stats.accepted, b.stats.stop_reason), f"generation {i}"
    n = len(prompts)
    spec, plain = ours[:n], ours[2 * n:3 * n]
    assert [r.tokens for r in spec] == [r.tokens for r in plain]  # greedy speculative == plain on ARM itself
    assert sum(r.stats["drafted"] - r.stats["accepted"] for r in spec) > 0  # the random drafter was rejected
    assert any(r.stats["stop_reason"] == "cache_full" for r in spec)


@ARM64
def test_validate_arch_arm64_command(arm64_runner, tiny_bundle):
    done = subprocess.run([MTP_EDGE, "validate", str(tiny_bundle), "--arch", "arm64", "--json", "--max-new-tokens", "24",
                           "--num-prompts", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["arch"] == "arm64" and report["runner"] == str(arm64_runner)
    assert report["qemu_cpu"] == arm64.qemu_cpu(arm64.tools()["qemu"])
    assert report["ok"] and report["tokens_must_match"] and report["tokens_identical"]  # fp32: the same tokens as x86
    top1 = report["top1_agreement"]  # teacher-forced target argmax, ARM vs x86, at every position
    assert top1["positions"] >= 2 * 24 and top1["agreement"] == 1.0 and top1["first_disagreement"] == [None, None]
    assert top1["disagreement_logit_gaps"] == [] and top1["near_tie_share"] == 0.0 and top1["median_top2_logit_gap"] > 0
    assert all(c["token_identical"] and c["first_divergence"] == [None, None] for c in report["cases"])
    assert report["native_speculative_equals_plain"] and report["native_auto_equals_plain"]


@ARM64
def test_arm64_text_round_trip(arm64_runner):
    """The tokenizer built for aarch64 (mtp_edge_text: HFTokenizer, PCRE2, nlohmann/json) under qemu:
    the held-out prompts of the shipped pair encode to Python's ids and decode back to Python's text."""
    from test_native_text import SHIPPED_TOKENIZER, assert_same_as_python, heldout_texts, random_ids

    argv, env, _ = build.runner_command(arm64_runner.with_name("mtp_edge_text"), "arm64")
    assert_same_as_python(argv, SHIPPED_TOKENIZER, heldout_texts(), random_ids(4, 4096, 20), env=env)


def test_missing_tools_name_the_apt_line(monkeypatch):
    monkeypatch.setattr(arm64.shutil, "which", lambda name: None)  # no cross compiler, no qemu, no apt-get
    with pytest.raises(build.NativeError) as e:
        arm64.tools(progress=False)
    assert "aarch64-linux-gnu-g++-12" in str(e.value) and "qemu-aarch64" in str(e.value)
    assert "apt-get install -y g++-12-aarch64-linux-gnu qemu-user" in str(e.value)
    with pytest.raises(build.NativeError, match="arch 'x86' is unknown; choose from native, arm64"):
        build.runner_command(Path("runner"), "x86")


def test_top1_agreement_measures_how_close_the_disagreements_were():
    """Pure arithmetic (no runner): the x86 logit gap at each position the other arch's argmax differs."""
    import torch

    from mtp_edge.runtime.native.validate import top1_agreement

    x86 = [torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9], [5.0, 0.0, 4.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    report = top1_agreement([[0, 2, 0], [1]], x86)  # position 2 (a near-tie, 0.1) and the last (1.0) differ
    assert (report["positions"], report["agreeing"]) == (4, 2) and report["agreement"] == 0.5
    assert report["first_disagreement"] == [1, 0]
    assert report["disagreement_logit_gaps"] == pytest.approx([0.1, 1.0])
    # Top-two gaps 2.0, 0.1, 1.0, 1.0: three of four positions are within the widest disagreement (1.0).
    assert report["median_top2_logit_gap"] == pytest.approx(1.0) and report["near_tie_share"] == 0.75
