"""The main job: the shipped default pair on held-out prompts, plain vs speculative, per backend."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from mtp_edge.export.cache import cached_bundle
from mtp_edge.export.settings import DEFAULT, ExportSettings
from mtp_edge.models.shipped import default_pair_dir, heldout_prompts
from mtp_edge.runtime.sampling import SamplingConfig
from mtp_edge.runtime.speculative import generate



def eager_backend(pair_dir: Path | None = None, max_seq_len: int = 256):
    from mtp_edge.models import load_pair

    from mtp_edge.runtime.backends.eager import EagerBackend

    pair_dir = pair_dir or default_pair_dir()
    return EagerBackend(*load_pair(pair_dir / "target", pair_dir / "drafter", max_seq_len=max_seq_len))


# quantize=DEFAULT: each format's default recipe for the pair (quantize.recipes.default_recipe).
# draft_chains=(2,): the one-call draft of 2 tokens only. The first run exports this bundle, and each
# longer one-call draft is the draft step unrolled once more, another method to lower (2..4 made the
# suite's demo export 245 -> 398 s); on this pair's .pte the policy drafts 2 tokens when it drafts
# (session 5's idle run: fixed K=2 0.91x plain, K=3 0.88x, K=4 0.80x), and a round of 3 or 4 drafts
# step by step. `mtp-edge export` still gives every length by default.
DEMO_EXPORT = ExportSettings(k=4, max_seq_len=256, prefill_chunk=32, backend="xnnpack", formats=("pte", "onnx"),
                             quantize=DEFAULT, draft_chains=(2,))


def pte_backend(pair_dir: Path | None = None):
    from mtp_edge.runtime.backends.pte import PteBackend

    return PteBackend(cached_bundle(pair_dir or default_pair_dir(), settings=DEMO_EXPORT))


def onnx_backend(pair_dir: Path | None = None):
    from mtp_edge.runtime.backends.onnx import OnnxBackend

    return OnnxBackend(cached_bundle(pair_dir or default_pair_dir(), settings=DEMO_EXPORT))


BACKENDS = {"eager": eager_backend, "pte": pte_backend, "onnx": onnx_backend}


def compare(backend, prompts: list[list[int]], *, k: int | str, max_new_tokens: int, sampling=SamplingConfig(),
            eos_ids=(), desc: str = "", reference: list[list[int]] | None = None, max_k: int | None = None) -> dict:
    """Plain and speculative decoding of the same prompts on one backend, with the figures the demo prints.

    `outputs` holds the plain generations; with `reference` (another backend's outputs),
    `matches_reference` says whether this backend produced the very same tokens.
    """
    plain_tokens = plain_s = spec_tokens = spec_s = rounds = drafted = accepted = 0
    identical = True
    outputs, histogram = [], {}
    longest = (max_k if max_k is not None else backend.max_draft) if k == "auto" else k
    for prompt in tqdm(prompts, desc=desc or "prompts", leave=False):
        # Warm-up long enough for full rounds: ONNX Runtime plans memory per new input shape.
        generate(backend, prompt, k=longest, max_new_tokens=3 * (longest + 1), sampling=sampling, eos_ids=eos_ids)
        plain = generate(backend, prompt, k=0, max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos_ids)
        spec = generate(backend, prompt, k=k, max_k=max_k, max_new_tokens=max_new_tokens, sampling=sampling,
                        eos_ids=eos_ids)
        for n, count in spec.stats.k_histogram.items():
            histogram[n] = histogram.get(n, 0) + count
        identical &= spec.tokens == plain.tokens
        outputs.append(plain.tokens)
        plain_tokens += plain.stats.new_tokens - 1
        plain_s += plain.stats.decode_s
        spec_tokens += spec.stats.new_tokens - 1
        spec_s += spec.stats.decode_s
        rounds += spec.stats.rounds
        drafted += spec.stats.drafted
        accepted += spec.stats.accepted
    plain_tps, spec_tps = plain_tokens / plain_s, spec_tokens / spec_s
    return {
        "k": k,
        "plain_tokens_per_s": plain_tps,
        "speculative_tokens_per_s": spec_tps,
        "speedup": spec_tps / plain_tps,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "tokens_per_target_call": spec_tokens / rounds if rounds else 0.0,
        "token_identical": identical,
        "k_histogram": {str(n): histogram[n] for n in sorted(histogram)},  # rounds per draft length (0: plain)
        "matches_reference": None if reference is None else outputs == reference,
        "outputs": outputs,
    }


def run_demo(k: int | str = "auto", max_new_tokens: int = 64, backends=None) -> dict:
    pair_dir = default_pair_dir()
    prompts = [p["ids"] for p in heldout_prompts(pair_dir)]
    from mtp_edge.models.config import target_config_from_folder

    eos = target_config_from_folder(pair_dir / "target").eos_token_ids
    rows, reference = {}, None
    for name in backends or BACKENDS:  # eager first: every unquantized backend is held to its tokens
        backend = BACKENDS[name](pair_dir)
        manifest = getattr(backend, "manifest", None)
        recipe = manifest.quantization.recipe_for(name) if manifest else "none"
        row = compare(backend, prompts, k=k, max_new_tokens=max_new_tokens, eos_ids=eos, desc=f"demo {name}",
                      reference=reference if recipe == "none" else None, max_k=min(backend.max_draft, DEMO_EXPORT.k))
        reference = reference or row["outputs"]
        rows[name] = {"recipe": recipe, **{key: value for key, value in row.items() if key != "outputs"}}
    return {"pair": str(pair_dir), "prompts": len(prompts), "max_new_tokens": max_new_tokens, "greedy": True,
            "backends": rows}
