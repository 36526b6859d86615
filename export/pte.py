"""ExecuTorch export of a target + drafter pair into ONE .pte whose methods share the KV cache.

Methods (all shapes static):
  prefill(tokens [1, C] i64, start_pos [1] i64, logits_at [1] i64) -> (logits [V], hidden [H])
      One chunk of C = prefill_chunk prompt tokens at positions start_pos..start_pos+C-1; logits
      and final hidden state only at chunk index logits_at. A prompt goes in chunk by chunk, the
      last chunk padded.
  decode(tokens [1, 1] i64, start_pos [1] i64) -> (logits [V], hidden [H])
      One token: the K = 0 path and one-token rounds.
  verify_{n}(tokens [1, n] i64, start_pos [1] i64) -> (logits [n, V], hidden [n, H]), n = 2..K+1
      The speculative round's target pass over n tokens (the last token and n - 1 drafts): one
      method per length, so a shortened round (the adaptive draft length, an early stop, the end of
      the budget or the cache) pays for its own tokens only. `verify_method(n)` names the method of
      an n-token pass (decode for n = 1); the manifest lists every one with its static shapes.
  draft(token [1] i64, hidden [H], position [1] i64, validated_length [1] i64)
      -> (candidate_ids [C] i64, candidate_logits [C], hidden [H], argmax_id [1] i64)
      One drafter step: the target's scaled embedding of `token`, its store-layer K/V masked to
      positions < validated_length, the drafter's clustered head.

Why one static method per length rather than one method with a dynamic token count (measured on
executorch 1.5.1, the tiny pair and the shipped pair, XNNPACK): torch.export takes the dynamic
length (Dim.DYNAMIC; a named Dim fails a guard torch cannot prove in attend_grouped's reshape),
but XNNPACK's partitioner keeps every reshape with a symbolic size and every slice of a
dynamic-shaped tensor out of the delegate, so the dynamic graph runs in more, smaller delegates
with portable view/slice copies between them and XNNPACK re-plans its runtime whenever the length
changes. See VERIFY_LENGTHS_MEASURED below for the figures.

Every method's module holds the cache under the same FQN (`target.cache.k_{layer}` /
`target.cache.v_{layer}`) and mutates every cache buffer, and memory planning runs with
`share_mutable_buffers=True`: the buffers then live once, in memory arena 2, which all methods
of the program address. The drafter only reads the cache, so its step writes one row of every
buffer back with its own value: a method that only reads a buffer risks a frozen constant copy of
the (empty) cache. (executorch 1.5.1's planner also shares a read-only buffer when another method
of the program mutates it -- a draft method exported without the write-back still read the live
cache here -- but the write-back keeps that from depending on planner details; it costs one row.)

The cache writes are made in place (ExecutorchBackendConfig.run_reinplace_pass) and tanh-GELU is
kept out of XNNPACK, which would silently compute exact GELU (see xnnpack_partitioner).

Padded writes (the last prefill chunk; a verify padded to K + 1 tokens by a runtime that does not
call verify_{n}, such as android_demo/native's runner today) land past the usable length, so the
cache buffers carry `cache_slack(k, prefill_chunk)` extra positions: the usable max_seq_len (what a
runtime may fill) is the buffer length minus that slack, and no write ever leaves the buffer.

What the export needs from executorch 1.5.1 beyond its public API (patches that keep the export's
memory down, the tanh-GELU partitioner, reading a .pte back) is in export/executorch_compat.py and
applied here in one `with patched_for_export():` around lowering and to_executorch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mtp_edge.models import Gemma4Drafter, Gemma4Target, MtpEdgeError

from .executorch_compat import (
    patched_for_export,
    read_program,
    release_lowered_copies,
    release_weights,
    xnnpack_partitioner,
)

BACKENDS = ("xnnpack", "portable")
CACHE_FQN_PREFIX = "target.cache."
PAD_TOKEN = 0  # what padded prefill/verify slots hold; their outputs are discarded
DECODE = "decode"
VERIFY_PREFIX = "verify_"


class ExportError(MtpEdgeError, ValueError):
    """An export request that cannot be served as asked."""


def cache_slack(k: int, prefill_chunk: int) -> int:
    """Positions past the usable length that padded writes can reach.

    A verify at start <= max_seq_len - 1 - k_round is padded to K + 1 tokens (writes up to
    max_seq_len - 1 + K); the last prefill chunk of a prompt of <= max_seq_len - 1 tokens writes
    up to max_seq_len + prefill_chunk - 2.
    """
    return max(k, prefill_chunk - 1)


def buffer_length(max_seq_len: int, k: int, prefill_chunk: int) -> int:
    """Cache buffer length to build the target with, for a usable context of max_seq_len positions."""
    return max_seq_len + cache_slack(k, prefill_chunk)


# --------------------------------------------------------------------------- method modules


class _TargetView(nn.Module):
    """What the drafter step reads of the target, registered under the target's own names."""

    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.cache = target.cache
        self.embed_tokens = target.embed_tokens
        self.register_buffer("embed_scale", target.embed_scale, persistent=False)


class PrefillMethod(nn.Module):
    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.target = target

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor, logits_at: torch.Tensor):
        logits, hidden = self.target(tokens, start_pos, logits_at=logits_at)
        return logits.reshape(-1), hidden.index_select(1, logits_at).reshape(-1)


class VerifyMethod(nn.Module):
    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.target = target

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor):
        logits, hidden = self.target(tokens, start_pos)
        return logits[0], hidden[0]


class DecodeMethod(VerifyMethod):
    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor):
        logits, hidden = self.target(tokens, start_pos)
        return logits.reshape(-1), hidden.reshape(-1)


class DraftMethod(nn.Module):
    def __init__(self, target: Gemma4Target, drafter: Gemma4Drafter):
        super().__init__()
        self.target = _TargetView(target)
        self.drafter = drafter
        self.store_layers = dict(target.cfg.store_layers)
        self.cache_layers = tuple(target.cfg.cache_layers)

    def _touch_cache(self, position: torch.Tensor) -> None:
        """Write row `position` of every cache buffer back with its own value.

        A no-op on the values, but a real mutation in the graph, so that ExecuTorch plans the
        buffers of this method as the shared mutable state rather than as constants. The row is
        a runtime value, so no pass can fold the write away.
        """
        for layer in self.cache_layers:
            for buf in self.target.cache.layer(layer):
                row = position.clamp(0, buf.shape[2] - 1)
                buf.index_copy_(2, row, buf.index_select(2, row))

    def forward(self, token: torch.Tensor, hidden: torch.Tensor, position: torch.Tensor, validated_length: torch.Tensor):
        self._touch_cache(position)
        embedding = Gemma4Target.embed(self.target, token.view(1, 1))
        kv = {layer_type: self.target.cache.layer(layer) for layer_type, layer in self.store_layers.items()}
        return self.drafter.draft_step(embedding, hidden.view(1, 1, -1), position, validated_length, kv)


# Input/output names per kind of method, in call order (the manifest and the runtime read these).
METHOD_IO = {
    "prefill": (("tokens", "start_pos", "logits_at"), ("logits", "hidden")),
    "verify": (("tokens", "start_pos"), ("logits", "hidden")),
    "decode": (("tokens", "start_pos"), ("logits", "hidden")),
    "draft": (("token", "hidden", "position", "validated_length"), ("candidate_ids", "candidate_logits", "hidden", "argmax_id")),
}


def verify_method(n: int) -> str:
    """The method of an n-token target pass: decode for one token, verify_{n} for 2..K+1."""
    return DECODE if n == 1 else f"{VERIFY_PREFIX}{n}"


def method_kind(name: str) -> str:
    """prefill / verify / decode / draft: what a method of the program does (verify_3 -> verify)."""
    if name.startswith(VERIFY_PREFIX) and name[len(VERIFY_PREFIX):].isdigit():
        return "verify"
    return name


def method_modules(target: Gemma4Target, drafter: Gemma4Drafter, k: int, prefill_chunk: int) -> dict[str, tuple[nn.Module, tuple]]:
    """Method name -> (module, example inputs): prefill, decode, verify_2..verify_{k+1}, draft."""
    i64 = dict(dtype=torch.long)
    hidden = torch.zeros(target.cfg.hidden_size, dtype=target.embed_tokens.weight.dtype)
    return {
        "prefill": (PrefillMethod(target), (torch.zeros(1, prefill_chunk, **i64), torch.zeros(1, **i64), torch.zeros(1, **i64))),
        DECODE: (DecodeMethod(target), (torch.zeros(1, 1, **i64), torch.zeros(1, **i64))),
        **{verify_method(n): (VerifyMethod(target), (torch.zeros(1, n, **i64), torch.zeros(1, **i64))) for n in range(2, k + 2)},
        "draft": (DraftMethod(target, drafter), (torch.zeros(1, **i64), hidden, torch.zeros(1, **i64), torch.ones(1, **i64))),
    }


# --------------------------------------------------------------------------- export


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_info(name: str, value) -> dict:
    return {"name": name, "shape": list(value.shape), "dtype": _dtype_name(value.dtype)}


def _signature(name: str, program) -> dict:
    """Input/output names, shapes and dtypes of an ExportedProgram's user inputs and outputs."""
    in_names, out_names = METHOD_IO[method_kind(name)]
    sig = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = [placeholders[n].meta["val"] for n in sig.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = output_node.args[0]
    user_outputs = [o.meta["val"] for o, spec in zip(outputs, sig.output_specs) if spec.kind.name == "USER_OUTPUT"]
    assert len(user_inputs) == len(in_names) and len(user_outputs) == len(out_names), name
    return {
        "inputs": [_tensor_info(n, v) for n, v in zip(in_names, user_inputs)],
        "outputs": [_tensor_info(n, v) for n, v in zip(out_names, user_outputs)],
    }


def cache_layout(target: Gemma4Target, max_seq_len: int) -> dict:
    buffers = [
        {"name": CACHE_FQN_PREFIX + name, "shape": list(buf.shape), "dtype": _dtype_name(buf.dtype)}
        for name, buf in target.cache.named_buffers()
    ]
    nbytes = sum(buf.numel() * buf.element_size() for buf in target.cache.buffers())
    return {
        "buffers": buffers,
        "max_seq_len": max_seq_len,
        "buffer_length": target.max_seq_len,
        "bytes": nbytes,
        "store_layers": dict(target.cfg.store_layers),
    }


def _storages(t: torch.Tensor):
    """The plain tensors behind t: itself, or a quantized subclass's inner data / scales / zero points."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from _storages(getattr(t, name))
    else:
        yield t


def _weight_bytes(*modules: nn.Module) -> int:
    """Bytes of the distinct parameter and constant-buffer storages (tied weights counted once)."""
    seen, total = set(), 0
    for module in modules:
        for name, param in [*module.named_parameters(), *module.named_buffers()]:
            if name.startswith("cache."):
                continue
            for t in _storages(param):
                storage = t.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
    return total


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.step = enabled, total, 0
        self.started = self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.step += 1
        if self.enabled:
            print(f"[export {self.step}/{self.total}] {stage} ({now - self.last:.1f}s, total {now - self.started:.1f}s)",
                  file=sys.stderr, flush=True)
        self.last = now


def planned_buffer_sizes(executorch_program) -> dict[str, list[int]]:
    """Method -> non_const_buffer_sizes: [0 (reserved), activations arena, shared mutable arena]."""
    return {plan.name: list(plan.non_const_buffer_sizes) for plan in executorch_program.execution_plan}


def inspect_program(pte_path: str | Path) -> dict:
    """Read back a .pte's memory plan: per method its planned arena sizes, its operators, and
    where each named mutable buffer lives (memory id, offset), straight from the serialized program."""
    program = read_program(Path(pte_path).read_bytes())
    methods = {}
    for plan in program.execution_plan:
        buffers = {}
        for value in plan.values:
            val = value.val
            info = getattr(val, "extra_tensor_info", None)
            if info is not None and info.fully_qualified_name:
                alloc = val.allocation_info
                buffers[info.fully_qualified_name] = {
                    "memory_id": alloc.memory_id if alloc else None,
                    "offset": (alloc.memory_offset_high << 32 | alloc.memory_offset_low) if alloc else None,
                    "shape": list(val.sizes),
                }
        operators = []
        for chain in plan.chains:
            for instruction in chain.instructions:
                op_index = getattr(instruction.instr_args, "op_index", None)
                operators.append(plan.operators[op_index].name if op_index is not None else type(instruction.instr_args).__name__)
        methods[plan.name] = {
            "non_const_buffer_sizes": list(plan.non_const_buffer_sizes),
            "mutable_buffers": buffers,
            "operators": operators,
        }
    return methods


def export_pte(
    target: Gemma4Target,
    drafter: Gemma4Drafter,
    out_path: str | Path,
    *,
    k: int,
    prefill_chunk: int,
    max_seq_len: int | None = None,
    backend: str = "xnnpack",
    quantized: bool = False,
    methods: tuple[str, ...] | None = None,
    consume: bool = False,
    progress: bool = True,
) -> dict:
    """Export the pair to out_path (written to a temporary name, renamed at the end).

    `methods` keeps a subset of prefill / decode / verify / draft (default all; "verify" stands for
    every verify_{n}, a single verify_{n} may also be named): a draft-only program is what
    `bench head` times.

    consume=True releases the modules' weights once the methods are traced (the modules are left
    without them), so that lowering and constant propagation can free each weight as they replace
    it: what lets a full-size export fit a laptop's memory.

    The target's cache buffers must be `buffer_length(max_seq_len, k, prefill_chunk)` long
    (load the target with that max_seq_len); max_seq_len defaults to the longest that fits.
    Returns the method signatures, the cache layout and the sizes.
    """
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    if k < 1:
        raise ExportError(f"k (draft tokens per round) must be >= 1 for a pair export, got {k}.")
    if prefill_chunk < 1:
        raise ExportError(f"prefill_chunk must be >= 1, got {prefill_chunk}.")
    slack = cache_slack(k, prefill_chunk)
    longest = target.max_seq_len - slack
    if max_seq_len is None:
        max_seq_len = longest
    if max_seq_len < 2 or max_seq_len > longest:
        raise ExportError(
            f"max_seq_len {max_seq_len} does not fit a cache of {target.max_seq_len} positions with k={k}, "
            f"prefill_chunk={prefill_chunk} (padded writes need {slack} spare positions): build the target with "
            f"max_seq_len=buffer_length(max_seq_len, k, prefill_chunk) = {buffer_length(max(max_seq_len, 2), k, prefill_chunk)}."
        )
    out_path = Path(out_path)
    started = time.perf_counter()
    modules = method_modules(target, drafter, k, prefill_chunk)
    if methods is not None:
        kinds = {method_kind(name) for name in modules}
        unknown = sorted(set(methods) - set(modules) - kinds)
        if unknown or not methods:
            raise ExportError(f"unknown method(s) {unknown or methods}; expected a subset of "
                              f"{', '.join(sorted(kinds | set(modules)))}.")
        modules = {name: m for name, m in modules.items() if name in methods or method_kind(name) in methods}
    step = _Progress(progress, total=len(modules) + 3)

    layout = cache_layout(target, max_seq_len)
    weight_bytes = _weight_bytes(target, drafter)
    exported = {}
    with torch.no_grad():
        for name, (module, inputs) in modules.items():
            exported[name] = torch.export.export(module.eval(), inputs, strict=False)
            step(f"torch.export {name}")
        signatures = {name: _signature(name, ep) for name, ep in exported.items()}
        if consume:
            del modules, module
            release_weights(target, drafter)

        partitioner = [xnnpack_partitioner()] if backend == "xnnpack" else []
        with patched_for_export():  # executorch 1.5.1 workarounds, all in export/executorch_compat.py
            edge = to_edge_transform_and_lower(exported, partitioner=partitioner)
            del exported
            release_lowered_copies(edge)
            step(f"to_edge_transform_and_lower ({backend})")
            et = edge.to_executorch(
                ExecutorchBackendConfig(
                    memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
                    emit_mutable_buffer_names=True,
                    # The cache writes (index_copy_ -> functional index_put) become in-place index_put_
                    # on the shared buffer; without it every step copies each cache buffer twice (a
                    # functional index_put into a fresh activation, then a copy_ back into the buffer).
                    run_reinplace_pass=True,
                    # Quantized (torchao) weights: fold the weight-side dequantize/pack ops into constants
                    # and fuse the quantized embedding pattern into ExecuTorch's embedding kernels.
                    do_quant_fusion_and_const_prop=quantized,
                )
            )
            del edge
        step("to_executorch (memory planning, emit)")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            et.write_to_file(f)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    step(f"wrote {out_path}")

    return {
        "methods": signatures,
        "cache": layout,
        "k": k,
        "prefill_chunk": prefill_chunk,
        "backend": backend,
        "sizes": {
            "pte_bytes": out_path.stat().st_size,
            "cache_bytes": layout["bytes"],
            "weight_bytes": weight_bytes,
            "non_const_buffer_sizes": planned_buffer_sizes(et.executorch_program),
        },
        "export_s": time.perf_counter() - started,
    }
