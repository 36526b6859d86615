"""Quantize the PyTorch modules of a pair in place with torchao (the ExecuTorch path).

torchao swaps each weight for a quantized tensor subclass; torch.export then sees
dequantize / dynamic-quantize patterns that ExecuTorch lowers to XNNPACK's int8 x int4 / int8 x
int8 GEMMs (linears) and to its quantized embedding kernels (gathers). The same modules run
eagerly too, which is what the quality report compares against.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from mtp_edge.models import Gemma4Drafter, Gemma4Target

from .recipes import PairRecipe, RecipeError, Scheme

BITS = {"8da4w": torch.int4, "int4": torch.int4, "8da8w": torch.int8, "emb4": torch.int4, "emb8": torch.int8}


def weight_mapping():
    """Symmetric, scale = max(-min / -qmin, max / qmax) per group: no value is clipped, and weights
    already on such a grid (a QAT checkpoint, quantize/qat.py) quantize back to themselves exactly.
    torchao's default symmetric scale (amax / 7.5) rescales every group of such weights."""
    from torchao.quantization.quant_primitives import MappingType

    return MappingType.SYMMETRIC_NO_CLIPPING_ERR


def grid_integers(weight: torch.Tensor, scheme: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What torchao's quantize_ stores for a [rows, cols] `weight` under `scheme`: the integers q
    (int8 tensor, in the scheme's range) and the scales [rows, cols // block] (fp32), where a block
    is `group` columns for the grouped schemes and a whole row otherwise. Symmetric: no zero points.
    The ONNX path (quantize/nbits.py) writes these same integers, so both formats hold one grid."""
    from torchao.quantization.quant_primitives import choose_qparams_affine, quantize_affine

    bits = 4 if BITS[scheme] == torch.int4 else 8
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    block = (1, group if scheme in ("8da4w", "int4", "emb4") else weight.shape[-1])
    scale, zero = choose_qparams_affine(weight, weight_mapping(), block, torch.int8, qmin, qmax,
                                        eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32,
                                        zero_point_dtype=torch.int8)
    q = quantize_affine(weight, block, scale, zero, torch.int8, qmin, qmax)
    return q, scale.reshape(weight.shape[0], -1)


def grid_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight grid_integers' (q, scale) stand for, dequantized as torchao does."""
    from torchao.quantization.quant_primitives import dequantize_affine

    block = (1, q.shape[1] // scale.shape[1])  # (q - 0) * scale: the int8 range stands for 4 bits too
    return dequantize_affine(q, block, scale, torch.zeros_like(scale, dtype=torch.int8), torch.int8, -128, 127,
                             output_dtype=dtype)


def _granularity(scheme: str, group: int):
    from torchao.quantization.granularity import PerAxis, PerGroup

    return PerGroup(group) if scheme in ("8da4w", "int4", "emb4") else PerAxis(0)


def linear_config(scheme: str, group: int):
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig

    if scheme in ("8da4w", "8da8w"):
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=BITS[scheme], weight_granularity=_granularity(scheme, group),
                                                     weight_mapping_type=weight_mapping())
    return IntxWeightOnlyConfig(weight_dtype=BITS[scheme], granularity=_granularity(scheme, group),
                                mapping_type=weight_mapping())


def embedding_config(scheme: str, group: int):
    from torchao.quantization.quant_api import IntxWeightOnlyConfig

    return IntxWeightOnlyConfig(weight_dtype=BITS[scheme], granularity=_granularity(scheme, group),
                                mapping_type=weight_mapping())


def check_pte_recipe(recipe: PairRecipe) -> None:
    """Refuse, before any work, what ExecuTorch 1.5.1 cannot run on XNNPACK."""
    for role in ("target", "drafter"):
        scheme = getattr(recipe, role)
        linears = {scheme.linear, *(o[1] for o in scheme.overrides)}
        if "int4" in linears:
            raise RecipeError(
                f"{role}: int4 (weight-only) linears have no ExecuTorch/XNNPACK kernel in executorch 1.5.1 (the export "
                "stops at torchao::dequantize_affine); use 8da4w for the pte format, or export int4 with --format onnx."
            )


def untie_lm_head(target: Gemma4Target) -> None:
    """Give a tied target its own lm_head Linear over the same weight (stored once until quantized)."""
    if target.lm_head is None:
        head = nn.Linear(target.cfg.hidden_size, target.cfg.vocab_size, bias=False, device="meta")
        head.weight = target.embed_tokens.weight
        target.lm_head = head


def torchao_shape_rule(kind: str, scheme: str, group: int, columns: int) -> str | None:
    """Why torchao's grouped schemes cannot take a weight of `columns` columns (None: they can)."""
    if scheme in ("8da4w", "int4", "emb4") and columns % group:
        what = "embedding dim" if kind == "embedding" else "in_features"
        return f"{what} {columns} is not a multiple of group size {group}"
    return None


def plan_model(model: nn.Module, scheme: Scheme, shape_rule=torchao_shape_rule) -> tuple[dict[str, tuple[str, str, int]], dict]:
    """What `scheme` quantizes in `model`: {module fqn: ("embedding" | "linear", scheme, group)} and the
    report the manifest records (what was quantized, and what was kept fp32 because of its shape).

    shape_rule(kind, scheme, group, columns) -> why a weight cannot take the scheme, or None: the
    format's own rule (torchao's by default; quantize.nbits.shape_rule for onnxruntime's operators)."""
    plan: dict[str, tuple[str, str, int]] = {}
    report = {"embeddings": [], "linears": {}, "skipped": {}}
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Embedding) and scheme.embedding != "none":
            how = ("embedding", scheme.embedding, scheme.embedding_group_size)
        elif isinstance(module, nn.Linear) and scheme.linear_for(fqn)[0] != "none":
            how = ("linear", *scheme.linear_for(fqn))
        else:
            continue
        why = shape_rule(*how, module.weight.shape[1])
        if why is not None:
            report["skipped"][fqn] = why
            continue
        plan[fqn] = how
        kind, name, group = how
        if kind == "embedding":
            report["embeddings"].append(fqn)
        else:
            report["linears"][fqn] = f"{name}:{group}" if name in ("8da4w", "int4") else name
    return plan, report


def config_for(kind: str, scheme: str, group: int):
    return embedding_config(scheme, group) if kind == "embedding" else linear_config(scheme, group)


def say_quantized(name: str, report: dict, progress: bool) -> None:
    if progress:
        print(f"[quantize] {name}: {len(report['linears'])} linears, {len(report['embeddings'])} embedding tables"
              + (f", {len(report['skipped'])} kept fp32 (shape)" if report["skipped"] else ""), file=sys.stderr, flush=True)


def quantize_model(model: nn.Module, scheme: Scheme, *, name: str, progress: bool = True) -> dict:
    """Quantize `model` in place per `scheme`; returns what was quantized and what was skipped (why)."""
    from torchao.quantization.quant_api import quantize_

    plan, report = plan_model(model, scheme)
    # One quantize_ pass per distinct (kind, scheme, group) so that overrides apply per module.
    passes: dict[tuple[str, str, int], set[str]] = {}
    for fqn, how in plan.items():
        passes.setdefault(how, set()).add(fqn)
    for (kind, scheme_name, group), names in passes.items():
        quantize_(model, config_for(kind, scheme_name, group), filter_fn=lambda m, fqn, names=names: fqn in names)
    say_quantized(name, report, progress)
    return report


def quantize_pair(target: Gemma4Target, drafter: Gemma4Drafter | None, recipe: PairRecipe, *, progress: bool = True) -> dict:
    """Quantize both models in place. The target's drafter-facing embedding is the target's own
    table, so the drafter step reads it at the target's precision."""
    reports = {}
    if not recipe.target.is_none:
        untie_lm_head(target)
        with torch.no_grad():
            reports["target"] = quantize_model(target, recipe.target, name="target", progress=progress)
    if drafter is not None and not recipe.drafter.is_none:
        with torch.no_grad():
            reports["drafter"] = quantize_model(drafter, recipe.drafter, name="drafter", progress=progress)
    return reports
