"""`mtp-edge validate`: the native (C++) runner against the Python pte backend, token for token.

`run_requests()` feeds the runner (built by native/build.py) JSON-line requests and parses its
JSON-line results; `validate_bundle()` runs a bundle's demo prompts through both the native
runner and the Python pte backend and reports whether the tokens are identical (printed by
commands/render.format_validate): at the bundle's K, at K = 0, and with K = auto, where both
sides decide each round's draft length from the same frozen cost table (the bundle's tuning.json,
else one measured here on the pte backend), so that they must make the same decisions too.

The runner is a desktop build of the code the Android app will use (android_demo/native), so
validating it here is validating the on-device loop: same methods, same sampling, same tokens.
With arch="arm64" (`mtp-edge validate --arch arm64`) the runner is cross-built for aarch64 and runs
under qemu-aarch64 (native/arm64.py): the ARM kernels against the Python runtime on this machine.
A quantized bundle's ARM int8 kernels may round differently from x86's, so there a token difference
is reported (with the first differing token of each prompt) but is not a failure; greedy speculative
== plain on the ARM runner itself still is.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .build import NativeError, build_runner, log_progress, runner_command


@dataclass
class NativeResult:
    tokens: list[int]
    stats: dict  # GenerationStats.as_dict() fields + decode_methods_s, runner_s, runner_per_round_s
    argmax: list[int] | None = None  # a score request's answer: the target's argmax after each token

# validate --arch arm64 on a quantized bundle: the share of teacher-forced positions where ARM's target
# argmax must equal x86's (int8 kernels may round differently; more disagreement is a broken bundle).
TOP1_AGREEMENT_FLOOR = 0.99


def score_request(tokens) -> dict:
    """A request for the target's teacher-forced argmax after each token (no generation)."""
    return {"score": [int(t) for t in tokens]}


def teacher_forced_logits(backend, tokens: list[int]):
    """The Python pte backend's side of a score request: the target's logits after each token [n, vocab],
    from verify calls of up to K + 1 tokens from position 0 (their argmax is what the runner answers)."""
    import torch

    rows = []
    for start in range(0, len(tokens), backend.k + 1):
        chunk = torch.tensor(tokens[start:start + backend.k + 1], dtype=torch.long)
        logits, _ = backend.verify(chunk, start)
        rows.append(logits.float())
    backend.rollback(0)
    return torch.cat(rows)


def top1_agreement(other_argmax: list[list[int]], x86_logits: list) -> dict:
    """ARM's teacher-forced argmax against x86's logits. At each disagreement, the gap in x86's own logits
    between its top token and the one ARM chose: rounding flips only near-ties (gaps far below the logits'
    spread); a large gap is a kernel computing something else. `near_tie_share`: the share of all positions
    whose x86 top-two gap is at most the largest disagreeing gap, i.e. how much of the text is that close."""
    import torch

    same = total = 0
    gaps, top2_gaps, first = [], [], []
    for argmax, logits in zip(other_argmax, x86_logits):
        top2 = logits.topk(2, dim=-1).values
        top2_gaps.append(top2[:, 0] - top2[:, 1])
        best = logits.argmax(dim=-1).tolist()
        first.append(first_divergence(argmax, best))
        for i, token in enumerate(argmax):
            total += 1
            if token == best[i]:
                same += 1
            else:
                gaps.append(float(logits[i, best[i]] - logits[i, token]))
    all_gaps = torch.cat(top2_gaps) if top2_gaps else torch.zeros(0)
    widest = max(gaps, default=0.0)
    return {"positions": total, "agreeing": same, "agreement": same / total if total else 1.0,
            "first_disagreement": first,
            "disagreement_logit_gaps": sorted(gaps),
            "median_top2_logit_gap": float(all_gaps.median()) if all_gaps.numel() else None,
            "near_tie_share": float((all_gaps <= widest).double().mean()) if gaps and all_gaps.numel() else 0.0}


def request(prompt, *, k: int | str = "auto", max_new_tokens: int, sampling=None, max_k: int | None = None,
            draft_p_min: float | None = None, costs=None, policy: dict | None = None,
            eos_ids: list[int] | None = None) -> dict:
    """One request line for the runner.

    k: draft tokens per round or "auto" (the runner's default); `sampling` a runtime.sampling.SamplingConfig
    (None: greedy; its rule is sent too); with "auto", max_k bounds the draft length (None: the bundle's K)
    and `costs` (a runtime.draft_policy.CostTable or its to_json() dict) freezes the policy's cost table;
    draft_p_min: stop a draft before a step whose top probability is below it. policy (with costs): any of
    probe_every, probe_k, margin and history ([drafted, accepted] rounds the acceptance estimate starts
    from), as DraftPolicy takes them; eos_ids: the tokens that end the generation (default the bundle's).
    """
    line = {"prompt": [int(t) for t in prompt], "k": "auto" if k == "auto" else int(k), "max_new_tokens": int(max_new_tokens)}
    if sampling is not None:
        line.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=sampling.seed,
                    rule=sampling.rule)
    if max_k is not None:
        line["max_k"] = int(max_k)
    if draft_p_min is not None:
        line["draft_p_min"] = float(draft_p_min)
    if costs is not None:
        line["costs"] = costs.to_json() if hasattr(costs, "to_json") else dict(costs)
    if policy:
        line.update(policy)
    if eos_ids is not None:
        line["eos_ids"] = [int(t) for t in eos_ids]
    return line


def run_requests(bundle_dir: str | Path, requests: list[dict], *, runner: Path | None = None,
                 timeout: float | None = None, progress: bool = False, arch: str = "native") -> list[NativeResult]:
    """Runs the requests through one runner process (the bundle is loaded once). `runner`: an executable
    built for `arch` (default: build_runner's); an arm64 one runs under qemu-aarch64."""
    exe = runner or build_runner(progress=progress, arch=arch)
    argv, env, _ = runner_command(exe, arch, progress=progress)
    text = "".join(json.dumps(r) + "\n" for r in requests)
    try:
        done = subprocess.run([*argv, str(bundle_dir)], input=text, capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        raise NativeError(f"the native runner did not finish {len(requests)} request(s) within {timeout:.0f}s.") from None
    results = []
    for line in done.stdout.splitlines():
        if line.strip():
            doc = json.loads(line)
            if "argmax" in doc:
                results.append(NativeResult([], {}, doc["argmax"]))
            else:
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


def demo_prompts(manifest, max_new_tokens: int) -> tuple[list[list[int]], str]:
    """The held-out prompts of the pair the bundle came from (those of the shipped pair if it has none).

    `manifest`: the bundle's export.manifest.BundleManifest. Ids are folded into the bundle's vocabulary
    (a random test pair may have a smaller one) and prompts are cut so that prompt + new tokens fit the
    cache where the cache allows it.
    """
    from mtp_edge.models.shipped import default_pair_dir, heldout_prompts

    source = Path(manifest.source.target if manifest.source is not None else "").parent
    pair_dir = source if (source / "heldout.json").is_file() else default_pair_dir()
    vocab = int(manifest.vocab_size)
    max_seq_len = int(manifest.cache.max_seq_len)
    keep = max(1, min(max_seq_len - 1 - max_new_tokens, max_seq_len // 2))
    prompts = [[int(t) % vocab for t in p["ids"][:keep]] for p in heldout_prompts(pair_dir)]
    return prompts, str(pair_dir / "heldout.json")


def frozen_costs(bundle_dir: Path, backend, max_k: int, *, progress: bool = False):
    """The cost table both sides decide K = auto from: the bundle's tuning.json (its pte entry) if it
    has one covering max_k, else measured once here on the Python pte backend. Returns (table, source)."""
    from mtp_edge.runtime.tuning import TUNING_FILE, TuningError, measure_costs, read_tuning

    try:
        table = read_tuning(bundle_dir, "pte")
    except TuningError as e:
        log_progress(f"ignoring {TUNING_FILE}: {e}", progress)
        table = None
    if table is not None and table.max_k >= max_k:
        return table, TUNING_FILE
    return measure_costs(backend, max_k), "measured"


def _histogram(counts) -> dict[str, int]:
    """{draft length: rounds} with string keys, as the runner's JSON writes it."""
    return {str(k): int(n) for k, n in sorted(((int(k), n) for k, n in counts.items())) if n}


def _sum_histograms(histograms) -> dict[str, int]:
    total: dict[int, int] = {}
    for h in histograms:
        for k, n in h.items():
            total[int(k)] = total.get(int(k), 0) + int(n)
    return _histogram(total)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The index of the first token where two generations differ (a length when one stops early), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def validate_bundle(bundle_dir: str | Path, *, max_new_tokens: int = 64, num_prompts: int | None = None,
                    progress: bool = True, arch: str = "native") -> dict:
    """Native runner vs the Python pte backend on the bundle's demo prompts. Cases: greedy and seeded
    sampling at the bundle's K; greedy K = 0; K = auto greedy, seeded sampling under the rejection rule
    and under the coupled rule (both sides given one frozen cost table); coupled sampling at K = 0.
    Tokens and per-round draft lengths (k histograms) must be identical; greedy output must not depend
    on K, nor coupled sampling's. tok/s and per-round overheads are reported.

    arch="arm64": the runner cross-built for aarch64, run under qemu-aarch64 (its tok/s are emulated).
    For a quantized bundle, tokens that differ from x86's Python run are reported (first_divergence per
    prompt) and do not make the report fail; the runner's own checks (greedy speculative == plain,
    auto == plain, coupled auto == coupled K = 0) still do."""
    from mtp_edge.export.bundle import read_manifest

    from mtp_edge.runtime.backends.pte import PteBackend
    from mtp_edge.runtime.draft_policy import DraftPolicy
    from mtp_edge.runtime.sampling import SamplingConfig
    from mtp_edge.runtime.speculative import generate

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, needs="pte")
    k = int(manifest.k)
    prompts, prompts_from = demo_prompts(manifest, max_new_tokens)
    prompts = prompts[:num_prompts] if num_prompts else prompts
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=11)
    coupled = SamplingConfig(temperature=0.8, top_p=0.95, seed=11, rule="coupled")
    cases = [  # (name, k, sampling)
        ("greedy", k, SamplingConfig()),
        ("sampling", k, sampling),
        ("greedy", 0, SamplingConfig()),
        ("greedy", "auto", SamplingConfig()),
        ("sampling", "auto", sampling),
        ("coupled", "auto", coupled),
        ("coupled", 0, coupled),
    ]
    exe = build_runner(progress=progress, arch=arch)
    _, _, qemu_cpu = runner_command(exe, arch, progress=progress)
    if qemu_cpu:
        log_progress(f"running the {arch} runner under qemu-aarch64 (CPU {qemu_cpu})", progress)
    backend = PteBackend(bundle_dir)
    eos = backend.eos_ids
    # K = auto: the policy's bound as generate() computes it, and one frozen table for both sides.
    has_drafter = backend.has_drafter and backend.max_draft > 0
    bound = min(backend.max_draft, backend.max_seq_len - 2) if has_drafter else 0
    costs, cost_source = frozen_costs(bundle_dir, backend, bound, progress=progress) if has_drafter else (None, "none")
    policy_k = min(bound, costs.max_k) if costs is not None else 0

    # Native: one process, the bundle loaded once; a short warm-up request first (page-in, XNNPACK setup).
    warm = request(prompts[0], k=k, max_new_tokens=min(max_new_tokens, 2 * (k + 1)))
    lines = [warm] + [request(p, k=ck, max_new_tokens=max_new_tokens, sampling=cs, costs=costs if ck == "auto" else None)
                      for _, ck, cs in cases for p in prompts]
    log_progress(f"native runner: {len(lines) - 1} generations", progress)
    started = time.perf_counter()
    native = run_requests(bundle_dir, lines, runner=exe, arch=arch)[1:]
    native_wall = time.perf_counter() - started

    log_progress(f"python pte backend: {len(lines) - 1} generations", progress)
    generate(backend, prompts[0], k=k, max_new_tokens=warm["max_new_tokens"], eos_ids=eos)
    python = []
    for _, ck, cs in cases:
        for p in prompts:
            # A fresh frozen policy per generation, as the native runner makes one per request.
            policy = DraftPolicy(costs, policy_k, frozen=True) if ck == "auto" and costs is not None else None
            # The first token is emitted after prefill, before the decode clock starts: the method
            # time from there on is the decode's, as the native runner's decode_methods_s.
            at_first = []
            g = generate(backend, p, k=ck, max_new_tokens=max_new_tokens, sampling=cs, eos_ids=eos, policy=policy,
                         on_token=lambda t: at_first or at_first.append(backend.method_seconds))
            python.append((g, backend.method_seconds - at_first[0]))

    rows, index = [], 0
    for name, ck, cs in cases:
        n_nat = native[index:index + len(prompts)]
        n_py = python[index:index + len(prompts)]
        index += len(prompts)
        identical = [a.tokens == b.tokens for a, (b, _) in zip(n_nat, n_py)]
        # Per prompt: the draft lengths each round made, and (auto) the lengths the policy planned.
        same_k = [a.stats["k_histogram"] == _histogram(b.stats.k_histogram)
                  and ((a.stats.get("policy") or {}).get("k_histogram") == _histogram((b.stats.policy or {}).get("k_histogram") or {})
                       if b.stats.policy else a.stats.get("policy") is None)
                  for a, (b, _) in zip(n_nat, n_py)]
        tokens = sum(r.stats["new_tokens"] - 1 for r in n_nat)
        native_decode = sum(r.stats["decode_s"] for r in n_nat)
        native_rounds = sum(r.stats["rounds"] for r in n_nat)
        native_drafted = sum(r.stats["drafted"] for r in n_nat)
        python_decode = sum(g.stats.decode_s for g, _ in n_py)
        python_methods = sum(m for _, m in n_py)
        python_rounds = sum(g.stats.rounds for g, _ in n_py)
        rows.append({
            "case": f"{name} K={ck}",
            "k": ck,
            "sampling": {"temperature": cs.temperature, "top_k": cs.top_k, "top_p": cs.top_p, "seed": cs.seed, "rule": cs.rule},
            "prompts": len(prompts),
            "identical": sum(identical),
            "token_identical": all(identical),
            "mismatched_prompts": [i for i, same in enumerate(identical) if not same],
            # Per prompt: the first token index where the runner's tokens leave Python's (None: identical).
            "first_divergence": [first_divergence(a.tokens, b.tokens) for a, (b, _) in zip(n_nat, n_py)],
            "k_histograms_identical": all(same_k),
            "k_histogram_mismatched_prompts": [i for i, same in enumerate(same_k) if not same],
            "native_k_histogram": _sum_histograms(r.stats["k_histogram"] for r in n_nat),
            "python_k_histogram": _sum_histograms(_histogram(g.stats.k_histogram) for g, _ in n_py),
            "early_stops": sum(r.stats.get("early_stops", 0) for r in n_nat),
            "new_tokens": tokens,
            "native_tokens_per_s": tokens / native_decode if native_decode else 0.0,
            "python_tokens_per_s": sum(g.stats.new_tokens - 1 for g, _ in n_py) / python_decode if python_decode else 0.0,
            "acceptance_rate": (sum(r.stats["accepted"] for r in n_nat) / native_drafted if native_drafted else 0.0) if ck else None,
            "native_runner_s_per_round": sum(r.stats["runner_s"] for r in n_nat) / native_rounds if native_rounds else 0.0,
            "python_runner_s_per_round": (python_decode - python_methods) / python_rounds if python_rounds else 0.0,
            "native_tokens": [r.tokens for r in n_nat],
        })
    top1 = None
    if arch != "native":
        # ARM's target against x86's on the same text (each prompt + x86's greedy output), position by position.
        sequences = [p + g.tokens for p, (g, _) in zip(prompts, python[2 * len(prompts):3 * len(prompts)])]
        sequences = [seq[:backend.max_seq_len] for seq in sequences]
        log_progress(f"top-1 agreement: {sum(map(len, sequences))} teacher-forced positions on {arch} and x86", progress)
        arm = run_requests(bundle_dir, [score_request(seq) for seq in sequences], runner=exe, arch=arch)
        x86 = [teacher_forced_logits(backend, seq) for seq in sequences]
        top1 = top1_agreement([r.argmax for r in arm], x86)
    by_case = {row["case"]: row["native_tokens"] for row in rows}
    greedy_plain = by_case["greedy K=0"]
    recipe = manifest.quantization.recipe_for("pte")
    # ARM's int8 kernels (dot-product, other accumulation orders) may round differently from x86's.
    tokens_must_match = not (arch != "native" and recipe != "none")
    report = {
        "bundle": str(bundle_dir),
        "runner": str(exe),
        "arch": arch,
        "qemu_cpu": qemu_cpu,
        "tokens_must_match": tokens_must_match,
        "prompts_from": prompts_from,
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "k": k,
        "quantization": recipe,
        "cost_table": costs.to_json() if costs is not None else None,
        "cost_source": cost_source,
        "native_wall_s": native_wall,
        "cases": [{key: v for key, v in row.items() if key != "native_tokens"} for row in rows],
        # Greedy output does not depend on K, nor coupled sampling's: checked on the native runner.
        "native_speculative_equals_plain": by_case[f"greedy K={k}"] == greedy_plain,
        "native_auto_equals_plain": by_case["greedy K=auto"] == greedy_plain,
        "native_coupled_auto_equals_plain": by_case["coupled K=auto"] == by_case["coupled K=0"],
        # arch != native: the target's teacher-forced argmax on the runner's arch against x86's.
        "top1_agreement": top1,
    }
    report["tokens_identical"] = all(row["token_identical"] and row["k_histograms_identical"] for row in rows)
    report["ok"] = ((report["tokens_identical"] or not tokens_must_match)
                    and (top1 is None or top1["agreement"] >= TOP1_AGREEMENT_FLOOR)
                    and report["native_speculative_equals_plain"] and report["native_auto_equals_plain"]
                    and report["native_coupled_auto_equals_plain"])
    return report
