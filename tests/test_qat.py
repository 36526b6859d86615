"""Quantization-aware fine-tuning: trained weights end on the recipe's grid, so torchao quantizes them
back to the same values (to the last bit of a float) (the property that makes the shipped QAT pair lose nothing but
its int8 activations when quantized)."""

from __future__ import annotations

import copy

import pytest
import torch

from torchao.utils import TorchAOBaseTensor

from mtp_edge.models import load_pair
from mtp_edge.models.training.target import train_target
from mtp_edge.models.training.common import TokenStream
from mtp_edge.quantize.modules import plan_model, quantize_model, untie_lm_head
from mtp_edge.quantize.qat import prepare, snap, weight_round_trip
from mtp_edge.quantize.recipes import parse_recipe


@pytest.mark.parametrize("scheme", ["8da4w+emb4", "8da8w+emb8", "8da4w:64+emb4:64"])
def test_qat_weights_quantize_back_to_themselves(tiny_dirs, scheme):
    target, _ = load_pair(*tiny_dirs, max_seq_len=8)
    plan_scheme = parse_recipe(f"target={scheme}").target
    before = {k: v.clone() for k, v in target.state_dict().items()}
    hooks = prepare(target, plan_scheme)
    stream = TokenStream(torch.randint(0, target.cfg.vocab_size, (4096,), generator=torch.Generator().manual_seed(0)))
    train_target(target.cfg, stream, steps=2, batch_size=2, length=16, lr=1e-3, warmup=1, model=target.train(),
                 desc="QAT test")
    snap(target, hooks)
    target.eval()
    plan, _ = plan_model(target, plan_scheme)
    assert plan and set(before) == set(target.state_dict())  # parametrizations are gone, names unchanged
    modules = dict(target.named_modules())
    for fqn, (_, name, group) in plan.items():
        weight = modules[fqn].weight
        assert not torch.equal(weight, before[fqn + ".weight"]), fqn  # gradients reached the master weights
        # On the grid: a second round trip moves nothing but the last bit of a float (scale = 7s / 7).
        torch.testing.assert_close(weight_round_trip(weight, name, group), weight.detach(), rtol=1e-6, atol=0, msg=fqn)

    quantized = copy.deepcopy(target)
    untie_lm_head(quantized)  # the tied head is quantized as a linear from the same (on-grid) table
    with torch.no_grad():
        quantize_model(quantized, plan_scheme, name="target", progress=False)
    checked = 0
    for fqn, module in quantized.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, TorchAOBaseTensor):
            reference = modules["embed_tokens"].weight if fqn == "lm_head" else modules[fqn].weight
            torch.testing.assert_close(weight.dequantize(), reference.detach(), rtol=1e-6, atol=0, msg=fqn)
            checked += 1
    assert checked == len(plan) + (1 if target.lm_head is None else 0)
