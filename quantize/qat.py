"""Quantization-aware fine-tuning: a target whose published weights quantize without loss.

    python -m mtp_edge.quantize.qat --work recipe_work --out models/default_pair

Post-training 4-bit rounding moves a small model's top-1 token on several percent of positions
(the shipped pair's target agreed with its 4-bit self on 92% of held-out tokens). Here the
target is fine-tuned with every weight the recipe quantizes replaced, in the forward, by its
quantize -> dequantize round trip (straight-through gradient) and every 8-bit-activation linear's
input by its int8 per-token round trip. At the end each such weight is set to its round trip and
the model is saved: its weights lie on the recipe's grid, so torchao quantizing them again returns
the same values (to the last bit of a float) and the quantized .pte differs from the published
model only by its int8 activations (and bf16 storage). Gemma's own QAT checkpoints are published
the same way. The drafter is then adapted to the new target (train-drafter from the old drafter).

onnxruntime's quantizer chooses its own scales (round to nearest with a zero point per block), so
the ONNX graphs re-round the grid: QAT helps them less (shipped pair: 92.0% -> 93.4% top-1).

The round trip is torchao's own (`choose_qparams_affine` / `quantize_affine` / `dequantize_affine`
with the mapping `quantize_` uses in modules.py), not a re-implementation of its arithmetic.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from mtp_edge.models import Gemma4Target

from .modules import grid_integers, grid_weight, plan_model
from .recipes import Scheme, parse_recipe

DEFAULT_SCHEME = "8da4w+emb4"
EIGHT_BIT_ACTIVATIONS = ("8da4w", "8da8w")


def weight_round_trip(weight: torch.Tensor, scheme: str, group: int) -> torch.Tensor:
    """`weight` quantized and dequantized as torchao's `quantize_` does for `scheme` (per group of
    `group` along the last dim for the grouped schemes, per row otherwise)."""
    q, scale = grid_integers(weight, scheme, group)
    return grid_weight(q, scale, weight.dtype)


class OnGrid(nn.Module):
    """Parametrization: the weight as the quantized model will see it; gradients pass straight through."""

    def __init__(self, scheme: str, group: int):
        super().__init__()
        self.scheme, self.group = scheme, group

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight_round_trip(weight.detach(), self.scheme, self.group) - weight).detach()


def _int8_activations():
    """A forward pre-hook rounding a linear's input to int8 per token, as XNNPACK's dynamic quantization does."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    fake = IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))
    return lambda module, args: (fake(args[0]),)


def prepare(model: Gemma4Target, scheme: Scheme) -> list:
    """Put every weight `scheme` quantizes on its grid in the forward; returns the hook handles.

    A tied LM head reads the embedding table, so it trains on the table's grid (the embedding
    scheme); with equal group sizes that is also the grid its linear scheme quantizes it to."""
    plan, _ = plan_model(model, scheme)
    modules = dict(model.named_modules())
    hooks = []
    for fqn, (kind, name, group) in plan.items():
        parametrize.register_parametrization(modules[fqn], "weight", OnGrid(name, group))
        if kind == "linear" and name in EIGHT_BIT_ACTIVATIONS:
            hooks.append(modules[fqn].register_forward_pre_hook(_int8_activations()))
    return hooks


@torch.no_grad()
def snap(model: nn.Module, hooks: list) -> None:
    """Replace each parametrized weight by its round trip (the value the forward used) and drop the hooks."""
    for hook in hooks:
        hook.remove()
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


@torch.no_grad()
def top1_agreement(model: Gemma4Target, scheme: Scheme, ids: torch.Tensor, window: int = 256) -> float:
    """Eager top-1 agreement of `model` quantized by `scheme` with `model` itself on windows of `ids`."""
    import copy

    from .modules import quantize_model, untie_lm_head

    quantized = copy.deepcopy(model)
    untie_lm_head(quantized)
    quantize_model(quantized, scheme, name="target", progress=False)
    rows = ids[: ids.numel() // window * window].view(-1, window)
    quantized, model = quantized.with_cache("none"), model.with_cache("none")  # cache-free passes over whole windows
    same = total = 0
    for row in rows.split(8):
        same += int((quantized(row, 0)[0].argmax(-1) == model(row, 0)[0].argmax(-1)).sum())
        total += row.numel()
    return same / total


def main(argv=None) -> int:
    from mtp_edge.models.hf_format import save_target
    from mtp_edge.models.load import load_target
    from mtp_edge.models.training.recipe import package
    from mtp_edge.models.training.drafter import run_train_drafter
    from mtp_edge.models.training.target import evaluate_target, train_target
    from mtp_edge.models.training.common import TokenStream

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="recipe_work", help="the recipe's work folder (target/, drafter/, streams.pt)")
    parser.add_argument("--out", default=None, help="package the QAT pair here (default: only write WORK/qat/)")
    parser.add_argument("--scheme", default=DEFAULT_SCHEME, help="the target scheme to train for (--quantize syntax)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--drafter-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    work = Path(args.work)
    qat = work / "qat"
    qat.mkdir(parents=True, exist_ok=True)
    scheme = parse_recipe(f"target={args.scheme}").target
    streams = torch.load(work / "streams.pt")
    train, held = TokenStream(streams["train"]), TokenStream(streams["held"])
    eval_ids = held.tokens[:16384]
    report: dict = {"scheme": scheme.text(), "steps": args.steps, "lr": args.lr}
    t0 = time.perf_counter()

    target = load_target(work / "target", max_seq_len=1).eval()
    report["before"] = {"eval": evaluate_target(target, held), "top1_agreement": top1_agreement(target, scheme, eval_ids)}
    print(json.dumps(report["before"]), flush=True)
    if not (qat / "target" / "model.safetensors").is_file():
        hooks = prepare(target, scheme)
        target = train_target(target.cfg, train, steps=args.steps, lr=args.lr, warmup=20, seed=args.seed,
                              model=target.train(), desc="QAT target")
        snap(target, hooks)
        save_target(target, qat / "target", dtype=torch.bfloat16, tokenizer_file=work / "target" / "tokenizer.json")
    target = load_target(qat / "target", max_seq_len=1).eval()  # what ships (bf16)
    report["after"] = {"eval": evaluate_target(target, held), "top1_agreement": top1_agreement(target, scheme, eval_ids)}
    report["target_s"] = time.perf_counter() - t0
    print(json.dumps(report["after"]), flush=True)

    t1 = time.perf_counter()
    if not (qat / "drafter" / "model.safetensors").is_file():
        run_train_drafter(qat / "target", train, qat / "drafter", work_dir=qat, init_dir=work / "drafter",
                          steps=args.drafter_steps, seed=args.seed)
    report["drafter_s"] = time.perf_counter() - t1
    (qat / "qat_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)
    if args.out:
        for name in ("heldout.json",):
            (qat / name).write_bytes((work / name).read_bytes())
        recipe_report = json.loads((work / "recipe_report.json").read_text())
        recipe_report["qat"] = report
        (qat / "recipe_report.json").write_text(json.dumps(recipe_report, indent=2))
        package(qat, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
