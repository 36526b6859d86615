"""Long contexts: an 8,192-position bundle of a small pair, a prompt of thousands of tokens crossing the
sliding window many times, speculative == plain (issue 23, item 3).

The shipped pair (sliding window 128), whose trained drafter gets drafts accepted, so that rollbacks
after a partial acceptance happen all along the context (a random drafter's are all rejected),
exported to ONNX fp32 with a context of 8,192 positions: an ONNX export takes seconds where a .pte
takes minutes, and the rollback and the masks under test are the runtime's and the graph's, the same
logic the .pte methods trace. The prompt is text (bench.long_context.long_prompt). `mtp-edge bench
long-context` reports the cost per token as the prompt grows (README: Figures); here it runs with
small budgets for its report.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_edge.export.settings import ExportSettings
from mtp_edge.models.shipped import default_pair_dir
from mtp_edge.runtime.backends.onnx import OnnxBackend
from mtp_edge.runtime.bench.long_context import long_prompt
from mtp_edge.runtime.speculative import generate

CONTEXT = 8192
LONG = ExportSettings(k=3, max_seq_len=CONTEXT, prefill_chunk=64, formats="onnx", quantize="none")
GROUP = pytest.mark.xdist_group("long-context")


@pytest.fixture(scope="module")
def long_bundle(shared_export) -> Path:
    pair = default_pair_dir()
    return shared_export((pair / "target", pair / "drafter"), LONG)


@GROUP
def test_speculative_equals_plain_over_thousands_of_positions(long_bundle):
    """A prompt of 12.5 sliding windows in an 8,192-position cache: greedy speculative (fixed K and auto)
    gives the ONNX target's own tokens, which are the eager target's. (The end of the cache is the
    fuzzer's: its cases run into it at short contexts; a prefill of 8,000 tokens costs the eager
    reference about 110 s here.)"""
    from mtp_edge.models import load_pair
    from mtp_edge.runtime.backends.eager import EagerBackend

    onnx = OnnxBackend(long_bundle, threads=1)
    prompt = long_prompt(long_bundle, 1600, onnx.vocab_size)
    plain = generate(onnx, prompt, k=0, max_new_tokens=48)
    pair = default_pair_dir()
    eager = EagerBackend(*load_pair(pair / "target", pair / "drafter", max_seq_len=CONTEXT))
    assert generate(eager, prompt, k=0, max_new_tokens=48).tokens == plain.tokens  # the target alone, in PyTorch
    drafted = accepted = 0
    for k in (3, "auto"):
        spec = generate(onnx, prompt, k=k, max_new_tokens=48)
        assert spec.tokens == plain.tokens, k
        drafted, accepted = drafted + spec.stats.drafted, accepted + spec.stats.accepted
    assert drafted > accepted > 0  # drafts both kept and rolled back this deep in the context


@GROUP
def test_bench_long_context_reports_cost_per_length(long_bundle):
    exe = str(Path(sys.executable).with_name("mtp-edge"))
    done = subprocess.run([exe, "bench", "long-context", str(long_bundle), "--lengths", "100,600", "--new-tokens", "4",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["context"] == CONTEXT and report["speculative_equals_plain"]
    assert [r["prompt_tokens"] for r in report["rows"]] == [100, 600]
    for row in report["rows"]:
        assert row["prefill_s"] > 0 and row["prefill_ms_per_token"] > 0
        assert all(row[name]["ms_per_token"] > 0 for name in ("plain", "k3", "auto"))
    too_long = subprocess.run([exe, "bench", "long-context", str(long_bundle), "--lengths", str(CONTEXT)],
                              capture_output=True, text=True, timeout=600)
    assert too_long.returncode == 2 and too_long.stderr.count("\n") == 1
    assert "prompts must be 1.." in too_long.stderr
