"""`mtp-edge eval BUNDLE`: what quantization cost, measured on held-out text.

    target top-1 agreement   the bundle target's argmax vs the unquantized target's, teacher-forced
    perplexity               of both on the same tokens, and the delta
    tokens per target call   speculative decoding with the bundle's pair vs the unquantized pair
                             (eager fp32) on held-out prompts, greedy
    bytes and RSS            per component: each artifact's size on disk, and the resident memory
                             of a fresh process that loads the component and runs it once (above
                             its pre-load baseline, and the process's peak)

The unquantized reference is the checkpoint pair the bundle was exported from (the manifest
records where, and the weights' sha256), or --reference-model / --reference-drafter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from mtp_edge.export.bundle import COPIED_FROM_TARGET, BundleError, BundleManifest, read_manifest

from mtp_edge.runtime.speculative import generate


def teacher_forced_logits(backend, ids: list[int], chunk: int) -> torch.Tensor:
    """Logits [len(ids), vocab] at every position of `ids` through the backend's own calls:
    a one-token prefill, then verify passes of `chunk` tokens (what the speculative loop runs)."""
    logits, _ = backend.prefill(torch.tensor(ids[:1]))
    rows = [logits.reshape(1, -1).double()]
    for start in range(1, len(ids), chunk):
        piece = torch.tensor(ids[start:start + chunk])
        out, _ = backend.verify(piece, start)
        rows.append(out.double())
    return torch.cat(rows)


def _nll(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Negative log-likelihood of ids[1:] given logits at positions 0..n-2."""
    targets = torch.tensor(ids[1:])
    return torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")


def quality(bundle_backend, reference_backend, windows: list[list[int]], chunk: int) -> dict:
    agree = total = 0
    nll_q, nll_r = [], []
    for ids in tqdm(windows, desc="eval windows", leave=False):
        q = teacher_forced_logits(bundle_backend, ids, chunk)
        r = teacher_forced_logits(reference_backend, ids, chunk)
        agree += int((q.argmax(-1) == r.argmax(-1)).sum())
        total += len(ids)
        nll_q.append(_nll(q, ids))
        nll_r.append(_nll(r, ids))
    ppl_q, ppl_r = (math.exp(float(torch.cat(v).mean())) for v in (nll_q, nll_r))
    return {"positions": total, "top1_agreement": agree / total, "perplexity": ppl_q, "reference_perplexity": ppl_r,
            "perplexity_delta": ppl_q - ppl_r, "perplexity_ratio": ppl_q / ppl_r}


def tokens_per_call(backend, prompts: list[list[int]], k: int, max_new_tokens: int) -> tuple[float, bool]:
    """Greedy tokens per target call over the prompts, and whether every speculative output equals
    the same backend's target-only output (losslessness, whatever the weights)."""
    emitted = rounds = 0
    lossless = True
    for prompt in prompts:
        result = generate(backend, prompt, k=k, max_new_tokens=max_new_tokens)
        emitted += result.stats.new_tokens - 1  # the first token comes from prefill
        rounds += result.stats.rounds
        lossless &= result.tokens == generate(backend, prompt, k=0, max_new_tokens=max_new_tokens).tokens
    return (emitted / rounds if rounds else 0.0), lossless


# --------------------------------------------------------------------------- peak RSS per component

def component_rss(bundle_dir: Path, fmt: str, role: str) -> dict:
    """RSS of a fresh process that loads one component and runs it once (rss_probe.component_rss_child)."""
    from mtp_edge.runtime.bench.timing import ChildError, run_in_child
    from mtp_edge.runtime.commands.rss_probe import component_rss_child

    try:
        out = run_in_child(component_rss_child, str(bundle_dir), fmt, role, timeout=1800)["result"]
    except ChildError as e:
        raise BundleError(f"{bundle_dir}: measuring {fmt} {role} failed: {e.reason}") from None
    out["above_baseline_bytes"] = out["rss_bytes"] - out["baseline_rss_bytes"]
    return out


# --------------------------------------------------------------------------- the report


def reference_dirs(manifest: BundleManifest, target_dir=None, drafter_dir=None) -> tuple[Path, Path]:
    source = manifest.source
    target_dir = Path(target_dir or (source.target if source else ""))
    drafter_dir = Path(drafter_dir or (source.drafter if source else ""))
    for role, folder in (("target", target_dir), ("drafter", drafter_dir)):
        if not (folder / "config.json").is_file():
            raise BundleError(
                f"the unquantized {role} checkpoint {str(folder) or '(not recorded)'} is not there; pass "
                f"--reference-{'model' if role == 'target' else 'drafter'} DIR (the folder the bundle was exported from)."
            )
    return target_dir, drafter_dir


def heldout_windows(target_dir: Path, text_ids: list[int] | None, positions: int, window: int) -> list[list[int]]:
    """Teacher-forcing windows: the given ids, or the shipped pair's held-out eval ids."""
    if text_ids is None:
        heldout = target_dir.parent / "heldout.json"
        if not heldout.is_file():
            raise BundleError(f"no held-out text for {target_dir}: pass --text FILE (tokenized with the bundle's tokenizer).")
        text_ids = json.loads(heldout.read_text())["eval_ids"]
    windows = [text_ids[i:i + window] for i in range(0, min(len(text_ids), positions), window)]
    return [w for w in windows if len(w) >= 2]


def evaluate_bundle(bundle_dir, *, backend: str | None = None, reference_model=None, reference_drafter=None,
                    text_ids: list[int] | None = None, positions: int = 1024, window: int = 128,
                    prompts: list[list[int]] | None = None, num_prompts: int = 32, max_new_tokens: int = 64,
                    rss: bool = True) -> dict:
    from mtp_edge.models import load_pair

    from mtp_edge.runtime.backends import open_bundle
    from mtp_edge.runtime.backends.eager import EagerBackend
    from mtp_edge.models.shipped import heldout_prompts

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    formats = manifest.formats
    backend = backend or formats[0]
    target_dir, drafter_dir = reference_dirs(manifest, reference_model, reference_drafter)
    bundled = open_bundle(bundle_dir, backend)
    window = min(window, bundled.max_seq_len)
    reference = EagerBackend(*load_pair(target_dir, drafter_dir, max_seq_len=bundled.max_seq_len), max_draft=bundled.k)
    windows = heldout_windows(target_dir, text_ids, positions, window)
    report = {"bundle": str(bundle_dir), "backend": backend, "recipe": manifest.quantization.recipe,
              "reference": {"target": str(target_dir), "drafter": str(drafter_dir)}}
    report["quality"] = quality(bundled, reference, windows, bundled.k + 1)
    if prompts is None:
        # Greedy tokens per call swing by several percent between runs of a few hundred tokens, so
        # the shipped prompts are joined by prompts cut from the held-out text after the eval windows.
        shipped = [p["ids"] for p in heldout_prompts(target_dir.parent)] if (target_dir.parent / "heldout.json").is_file() else []
        rest = heldout_windows(target_dir, text_ids, positions + 32 * 64, 32)[len(windows) * window // 32:]
        prompts = (shipped + rest)[:num_prompts]
    k = bundled.k
    quantized_tpc, lossless = tokens_per_call(bundled, prompts, k, max_new_tokens)
    reference_tpc, _ = tokens_per_call(reference, prompts, k, max_new_tokens)
    report["speculation"] = {"k": k, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
                             "tokens_per_target_call": quantized_tpc, "reference_tokens_per_target_call": reference_tpc,
                             "relative_change": quantized_tpc / reference_tpc - 1.0,
                             "speculative_equals_target_only": lossless}
    fp32 = sum(t.numel() * 4 for m in (reference.target, reference.drafter) for t in m.parameters())
    artifacts = {role: a.bytes for role, a in manifest.artifacts.items() if role not in COPIED_FROM_TARGET}
    per_format = {"pte": sum(b for r, b in artifacts.items() if r == "program"),
                  "onnx": sum(b for r, b in artifacts.items() if r.startswith("onnx_"))}
    report["bytes"] = {"artifacts": artifacts, "fp32_weight_bytes": fp32,
                       "per_format": {f: per_format[f] for f in formats},
                       "fp32_over_bundle": {f: fp32 / per_format[f] for f in formats}}
    if rss:
        components = {"pte": ["program"], "onnx": ["target", "drafter"]}
        # The evaluated format's components only: a bundle of both formats would otherwise pay a
        # subprocess per component of the other format, whose figures its own eval reports.
        report["peak_rss"] = {f"{backend}:{role}": component_rss(bundle_dir, backend, role) for role in components[backend]}
    return report
