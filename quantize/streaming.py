"""Quantize while loading: each planned weight is quantized from row chunks as the checkpoint streams in.

The fp32 weight is never whole in memory: the loader hands over rows (64 MiB at a time), each
chunk goes through the same torchao config as `quantize_model` would apply to the whole weight
(every scheme here quantizes rows independently: groups run along a row, or one scale per row),
and the chunks' quantized data land in preallocated tensors. A full E2B target (4.6B parameters,
18.5 GB in fp32) so needs about its quantized size plus one chunk.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mtp_edge.models import Gemma4Drafter, Gemma4Target, load_drafter, load_target

from .modules import config_for, plan_model, say_quantized, torchao_shape_rule, untie_lm_head
from .nbits import block_quantized, pack_rows, packing, shape_rule
from .recipes import PairRecipe, Scheme

FORMS = ("torchao", "onnx")


def _quantize_rows(rows: torch.Tensor, kind: str, scheme: str, group: int) -> torch.Tensor:
    """torchao's quantized tensor for a block of rows, through the same module transform quantize_ applies."""
    from torchao.quantization.quant_api import quantize_

    with torch.device("meta"):
        holder = nn.Embedding(*rows.shape) if kind == "embedding" else nn.Linear(rows.shape[1], rows.shape[0], bias=False)
    holder.weight = nn.Parameter(rows, requires_grad=False)
    quantize_(holder, config_for(kind, scheme, group), filter_fn=lambda m, fqn: True)
    return holder.weight


class StreamingQuantizer:
    """A loader sink (see mtp_edge.models.load): claims the checkpoint tensors that `scheme` quantizes
    and builds their quantized weights chunk by chunk. A tied LM head (the target's, untied first)
    is quantized from the same rows as the embedding table it shares.

    form "torchao": torchao's quantized tensors on the modules (the .pte path); "onnx": each
    quantized module replaced by a quantize.nbits module holding onnxruntime's packed layout of the
    same integers (the ONNX path), built from the chunks directly."""

    def __init__(self, model: nn.Module, scheme: Scheme, *, name: str, progress: bool = True, form: str = "torchao"):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, not {form!r}")
        self.model, self.name, self.progress, self.form = model, name, progress, form
        if isinstance(model, Gemma4Target):
            untie_lm_head(model)
        self.plan, self.report = plan_model(model, scheme, shape_rule if form == "onnx" else torchao_shape_rule)
        params = {id(p): key for key, p in model.named_parameters()}  # tied weights appear once, under the first name
        self.owners: dict[str, list[str]] = {}
        for fqn in self.plan:
            key = params[id(model.get_submodule(fqn).weight)]
            self.owners.setdefault(key, []).append(fqn)
        # A module that shares a claimed weight but stays fp32 (a tied head under a `none` linear
        # scheme) gets its own fp32 copy, filled from the same chunks.
        self.fp32_sharers: dict[str, list[str]] = {}
        for fqn, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if fqn not in self.plan and isinstance(weight, nn.Parameter) and params.get(id(weight)) in self.owners:
                self.fp32_sharers.setdefault(params[id(weight)], []).append(fqn)

    def claims(self, key: str) -> bool:
        return key in self.owners

    def take(self, key: str, rows: int, chunks: Iterable[torch.Tensor]) -> None:
        """Quantize the `rows`-row tensor `key` from its row chunks; install it on every module that owns it."""
        fqns = self.owners.pop(key)
        # Where the form allows it, modules that hold the same integers share one buffer: a tied
        # head packed like its embedding table (emb4 and 8da4w on one grid) costs no second copy.
        store = {fqn: packing(*self.plan[fqn][1:]) if self.form == "onnx" else fqn for fqn in fqns}
        writers = list({store[fqn]: fqn for fqn in fqns}.values())  # one module per buffer fills it
        first: dict[str, torch.Tensor] = {}  # fqn -> the first chunk's quantized tensor (its type and attributes)
        data: dict = {}  # store key -> the whole tensor's parts (qdata, scale, zero_point; or data, scales)
        sharers = self.fp32_sharers.pop(key, [])
        fp32 = None
        start = 0
        for chunk in chunks:
            if sharers:
                fp32 = torch.empty((rows, *chunk.shape[1:]), dtype=chunk.dtype) if fp32 is None else fp32
                fp32[start:start + chunk.shape[0]].copy_(chunk)
            for fqn in writers:
                if self.form == "onnx":
                    parts = pack_rows(chunk, *self.plan[fqn][1:])
                else:
                    q = _quantize_rows(chunk, *self.plan[fqn])
                    parts = [getattr(q, n) for n in q.tensor_data_names]
                    first.setdefault(fqn, q)
                if store[fqn] not in data:
                    data[store[fqn]] = [torch.empty((rows, *p.shape[1:]), dtype=p.dtype) for p in parts]
                for dest, part in zip(data[store[fqn]], parts):
                    dest[start:start + chunk.shape[0]].copy_(part)
            start += chunk.shape[0]
        for fqn in fqns:
            if self.form == "onnx":
                kind, scheme, group = self.plan[fqn]
                parent, _, child = fqn.rpartition(".")
                setattr(self.model.get_submodule(parent), child, block_quantized(kind, *data[store[fqn]], scheme, group))
                continue
            q = first[fqn]
            weight = type(q)(*data[fqn], *(getattr(q, a) for a in q.tensor_attribute_names))
            self.model.get_submodule(fqn).weight = nn.Parameter(weight, requires_grad=False)
        for fqn in sharers:
            self.model.get_submodule(fqn).weight = nn.Parameter(fp32, requires_grad=False)

    def finish(self) -> dict:
        if self.owners:
            raise RuntimeError(f"{self.name}: quantize-while-loading never received {sorted(self.owners)}")
        say_quantized(self.name, self.report, self.progress)
        return self.report


def load_quantized_pair(target_dir, drafter_dir, max_seq_len: int, recipe: PairRecipe, *, progress: bool = True,
                        form: str = "torchao") -> tuple[Gemma4Target, Gemma4Drafter, dict]:
    """load_pair with `recipe` applied while the checkpoints stream in; returns the same report as
    quantize_pair. form: "torchao" (the .pte path) or "onnx" (see StreamingQuantizer)."""
    sinks: dict[str, StreamingQuantizer] = {}

    def sink(role: str, scheme: Scheme):
        if scheme.is_none:
            return None
        return lambda model: sinks.setdefault(role, StreamingQuantizer(model, scheme, name=role, progress=progress, form=form))

    target = load_target(target_dir, max_seq_len, sink=sink("target", recipe.target))
    drafter = load_drafter(drafter_dir, target=target.cfg, sink=sink("drafter", recipe.drafter))
    return target, drafter, {role: s.finish() for role, s in sinks.items()}
