"""ExecuTorch export of a target + drafter pair into ONE .pte whose methods share the KV cache.

Methods (static shapes but for verify's token and row counts):
  verify(tokens [1, n] i64, start_pos [1] i64, logits_at [m] i64) -> (logits [m, V], hidden [m, H])
      The target's pass over n tokens at positions start_pos..start_pos+n-1, with logits and final
      hidden states only at the token indices logits_at. Both counts are dynamic (torch.export
      Dim.DYNAMIC): n = 1..max(C, K+1), m = 1..max(K+1, 3) (C = prefill_chunk). It serves both target calls:
      - a prompt chunk of up to C tokens, logits_at = [n - 1] (no padding: the last chunk is as long as
        what is left of the prompt);
      - a speculative round's last token and its n - 1 drafts, or one token (plain decoding, a round
        that drafted nothing), logits_at = 0..n-1: a shortened round (the adaptive draft length, an
        early stop, the end of the budget or the cache) pays for its own tokens only.
      The manifest gives its largest shapes and `lengths` [1, max(C, K+1)], the token counts it takes.
      One method rather than a prefill beside the verify (schema 3): lowering a target graph is most of
      an export's time and this removes one (shipped pair, default recipe, lowering of the methods alone,
      one run on a busy machine: prefill 65 s + verify 125 s against 138 s for the one method), at the
      same latency (same run, median of 150 interleaved calls, the old program / this one: a 32-token
      chunk 9.45 / 9.52 ms, verify of 1..5 tokens 1.54 1.97 2.09 2.33 3.06 / 1.49 1.90 2.09 2.29 3.02
      ms; the same logits and hidden states bit for bit).
  draft(token [1] i64, hidden [H], position [1] i64, validated_length [1] i64)
      -> (candidate_ids [C] i64, candidate_logits [C], hidden [H], argmax_id [1] i64)
      One drafter step: the target's scaled embedding of `token`, its store-layer K/V masked to
      positions < validated_length, the drafter's clustered head.
  draft_chain_k(token [1] i64, hidden [H], position [1] i64, validated_length [1] i64)
      -> (draft_ids [k] i64, top_probs [k]), k = 2..K
      k greedy drafter steps in one call, each step's argmax the next step's token (RoPE tables and
      masks built once: the position is the round's). Greedy rounds call it instead of k draft steps
      where the policy measures it cheaper; sampling drafts step by step (its accept rule needs each
      step's distribution on the runtime side). top_probs: each step's top candidate probability,
      so an early stop can still cut the drafts. One method per length, since a fixed-count graph
      cannot stop early and a shorter round would pay for the longest draft. Shipped pair (8da8w
      target, fp32 drafter head), same run, median of 400 interleaved calls: 4 draft steps 4 x 0.249
      ms against one draft_chain_4 0.723 ms (with an emb8 head: 4 x 0.373 against 1.258).

One dynamic-length verify rather than one static method per length (decode, verify_2..verify_K+1),
measured on executorch 1.5.1 (XNNPACK; the shipped pair 8da8w+emb8, K = 4, start 100; median ms
of 500 calls per length, interleaved in shuffled order on 2 busy cores; n = 1..5 tokens):
    one static method per length    3.94  5.20  6.41  7.35  8.10
    one dynamic verify              3.94  5.13  5.97  6.85  7.51
    schema 1 (padded to K + 1)      3.94  8.11  8.07  8.20  8.10   (n = 1 through decode)
Same logits bit for bit. On the tiny pair (K = 3, fp32) the dynamic verify was faster than schema 1
at every length (XNNPACK 0.43 0.55 0.61 0.63 ms against 0.55 0.77 0.76 0.75; portable 1.26 1.37
1.47 1.52 against 1.30 1.57 1.57 1.59) and level with the static methods. XNNPACK's partitioner
keeps reshapes with a symbolic size and slices of a dynamic-shaped tensor out of the delegate
(shipped verify: 146 delegates and 410 nodes outside them, against 98 and 231 static; tiny: 94 / 271
against 64 / 155), which the timings above include; partitioning and lowering it costs about one
static method (tiny: 7.7 s against 5-7 s, and it replaces two: verify and decode). Latency level or
better, memory decides: every delegated method holds its own copy of the packed target weights at
runtime (executorch 1.5.1 shares them only with XNNPACK's weight cache enabled, which its Python
runtime cannot do): each method costs another copy (+10.6 MB RSS per method loaded from the
shipped pair's 13 MB program, executorch.runtime), so one verify standing in for decode and every
length costs one copy where static lengths cost K + 1.
A named torch.export Dim fails on a guard torch cannot prove in attend_grouped's reshape
(n * min(32, 64 n) == 32 n); Dim.DYNAMIC with the same bounds exports.

Every method's module holds the cache under the same FQN (`target.cache.k_{layer}` /
`target.cache.v_{layer}`) and mutates every cache buffer, and memory planning runs with
`share_mutable_buffers=True`: the buffers then live once, in memory arena 2, which all methods
of the program address. The drafter only reads the cache, so its step writes one row of every
buffer back with its own value: a method that only reads a buffer risks a frozen constant copy of
the (empty) cache. (executorch 1.5.1's planner also shares a read-only buffer when another method
of the program mutates it -- a draft method exported without the write-back still read the live
cache here -- but the write-back keeps that from depending on planner details; it costs one row.)

The cache writes are made in place (ExecutorchBackendConfig.run_reinplace_pass). No operator of a
method's hot path is left to a portable kernel where an exact stand-in XNNPACK takes exists: every
node left out costs a copy and splits the method's delegate in two. The models build their norms
and attention from delegable ops (components.RMSNorm, attend_grouped); `delegable_ops` traces
tanh-GELU written out and RoPE's half swap as a matmul (a gelu op itself is kept out of XNNPACK,
which would silently compute exact GELU: see xnnpack_partitioner); graph_passes lets the dynamic
verify's views in. Measured on the shipped pair's default .pte (8da8w+emb8, same machine, same run,
median of 200 calls; before -> after): prefill chunk 51.7 -> 13.6 ms, verify(5) 11.8 -> 3.9 ms, one
token 4.3 -> 1.7 ms, draft step 0.67 -> 0.44 ms; verify's delegates 148 -> 17 (fp32, counted before
the RoPE stand-in).

Padded writes (the last prefill chunk before schema 4; a verify padded to K + 1 tokens, as schema-1
runtimes did) land past the usable length, so the cache buffers carry `cache_slack(k, prefill_chunk)`
extra positions: the usable max_seq_len (what a runtime may fill) is the buffer length minus that
slack, and no write ever leaves the buffer. Today's runtimes pad nothing; the slack stays so that the
cache layout (and every runtime's arithmetic on it) is unchanged.

What the export needs from executorch 1.5.1 beyond its public API (patches that keep the export's
memory down, the tanh-GELU partitioner, reading a .pte back) is in export/executorch_compat.py and
applied here in one `with patched_for_export():` around lowering and to_executorch.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mtp_edge.models import Gemma4Drafter, Gemma4Target, MtpEdgeError
from mtp_edge.models.components import ACTIVATIONS, RotateHalfByMatmul, batched_matmul, gelu_tanh_elementwise, rotate_half

from .graph_passes import InferTheSymbolicDimOfViews
from .manifest import PROGRAM_METADATA
from .executorch_compat import (
    edge_compile_config,
    patched_for_export,
    reinplace_is_safe,
    read_program,
    release_lowered_copies,
    release_weights,
    xnnpack_partitioner,
)

BACKENDS = ("xnnpack", "portable")
CACHE_FQN_PREFIX = "target.cache."
PAD_TOKEN = 0  # what padded prefill slots hold; their outputs are discarded


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


class VerifyMethod(nn.Module):
    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.target = target

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor, logits_at: torch.Tensor):
        logits, hidden = self.target(tokens, start_pos, logits_at=logits_at)
        return logits[0], hidden.index_select(1, logits_at)[0]


class DecodeMethod(nn.Module):
    """One token, flat outputs: not a method of the program any more (verify takes one token too);
    `bench head` times it eagerly."""

    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.target = target

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


class DraftChainMethod(DraftMethod):
    """draft_chain_k: k greedy drafter steps in one call (Gemma4Drafter.greedy_chain)."""

    def __init__(self, target: Gemma4Target, drafter: Gemma4Drafter, k: int):
        super().__init__(target, drafter)
        self.k = k

    def forward(self, token: torch.Tensor, hidden: torch.Tensor, position: torch.Tensor, validated_length: torch.Tensor):
        self._touch_cache(position)
        kv = {layer_type: self.target.cache.layer(layer) for layer_type, layer in self.store_layers.items()}
        embed = functools.partial(Gemma4Target.embed, self.target)
        return self.drafter.greedy_chain(embed, token, hidden.view(1, 1, -1), position, validated_length, kv, self.k)


@contextmanager
def delegable_ops(*models: nn.Module, batched_matmuls: bool = True):
    """Trace the models with exact stand-ins, in ops XNNPACK delegates, for ops it leaves to portable
    kernels (each of which splits a method's delegate); the models are put back after.

      tanh-GELU (MLPs, per-layer-input gates: modules with `activation` and `act`) written out,
        components.gelu_tanh_elementwise (float rounding apart, the same function);
      RoPE's rotate_half (attention modules with `rotate`) as a signed permutation matmul,
        components.RotateHalfByMatmul (exact);
      attention's 4-D matmuls (attention modules with `matmul`) as 3-D bmm,
        components.batched_matmul (no expand_copy of the cache), with `batched_matmuls`: XNNPACK
        programs only. The bmm reads the cache through a view, and a view outside a delegate of a
        cache written in place reads the wrong memory (executorch_compat.reinplace_is_safe); a
        portable program keeps the 4-D matmul, whose expand_copy reads the cache, and its in-place
        cache writes.

    Measured on the shipped pair's verify (with the model-side changes of the same commit): 24
    portable gelu calls and 26 slices gone.
    """
    gelus = [m for model in models for m in model.modules() if getattr(m, "activation", None) == "gelu_pytorch_tanh"]
    ropes = [m for model in models for m in model.modules() if getattr(m, "rotate", None) is rotate_half]
    for module in gelus:
        module.act = gelu_tanh_elementwise
    for module in ropes:
        module.rotate = RotateHalfByMatmul(module.head_dim)
        module.matmul = batched_matmul if batched_matmuls else torch.matmul
    try:
        yield
    finally:
        for module in gelus:
            module.act = ACTIVATIONS[module.activation]
        for module in ropes:
            module.rotate, module.matmul = rotate_half, torch.matmul


# Input/output names per method, in call order (the manifest and the runtime read these).
METHOD_IO = {
    "verify": (("tokens", "start_pos", "logits_at"), ("logits", "hidden")),
    "draft": (("token", "hidden", "position", "validated_length"), ("candidate_ids", "candidate_logits", "hidden", "argmax_id")),
}
DRAFT_CHAIN_IO = (("token", "hidden", "position", "validated_length"), ("draft_ids", "top_probs"))


def draft_chain_name(k: int) -> str:
    """The method that drafts k greedy tokens in one call."""
    return f"draft_chain_{k}"


def draft_chain_lengths(k: int) -> range:
    """The lengths a bundle of K = k has a one-call greedy draft for: 2..K (one token is a draft step)."""
    return range(2, k + 1)


def method_io(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return DRAFT_CHAIN_IO if name.startswith("draft_chain_") else METHOD_IO[name]


def method_modules(target: Gemma4Target, drafter: Gemma4Drafter, k: int, prefill_chunk: int,
                   draft_chains: tuple[int, ...] | None = None) -> dict[str, tuple[nn.Module, tuple]]:
    """Method name -> (module, example inputs); dynamic_shapes(k, prefill_chunk) gives the dynamic dims.
    draft_chains: the draft_chain_n lengths (default every length 2..k)."""
    i64 = dict(dtype=torch.long)
    hidden = torch.zeros(target.cfg.hidden_size, dtype=target.embed_tokens.weight.dtype)
    draft_inputs = (torch.zeros(1, **i64), hidden, torch.zeros(1, **i64), torch.ones(1, **i64))
    tokens, rows = dynamic_lengths(k, prefill_chunk)["verify"][1], logits_rows(k)[1]
    return {
        "verify": (VerifyMethod(target), (torch.zeros(1, tokens, **i64), torch.zeros(1, **i64), torch.arange(rows))),
        "draft": (DraftMethod(target, drafter), draft_inputs),
        **{draft_chain_name(n): (DraftChainMethod(target, drafter, n), draft_inputs)
           for n in (draft_chain_lengths(k) if draft_chains is None else draft_chains)},
    }


def dynamic_lengths(k: int, prefill_chunk: int) -> dict[str, tuple[int, int]]:
    """Method name -> (lowest, highest) token count of a method whose token count is dynamic.

    Verify takes a prompt chunk or a round: 1..max(prefill_chunk, K + 1) tokens, and at least 1..3:
    torch.export assumes a dynamic size is >= 2 (see dynamic_shapes), which would leave 2..2 at
    K = 1, C <= 2, a static size it refuses as a dynamic hint (found by `mtp-edge fuzz`'s exported
    pairs). The runtimes never verify more than K + 1 tokens of a round."""
    return {"verify": (1, max(prefill_chunk, k + 1, 3))}


def logits_rows(k: int) -> tuple[int, int]:
    """(lowest, highest) length of verify's logits_at: one row for a prompt chunk, up to K + 1 for a
    round (at least 1..3, as dynamic_lengths)."""
    return 1, max(k + 1, 3)


def dynamic_shapes(k: int, prefill_chunk: int) -> dict[str, tuple]:
    """Method name -> torch.export dynamic_shapes (verify's tokens run over dynamic_lengths, its
    logits_at over logits_rows).

    Dim.DYNAMIC, not a named Dim: the named one fails on a guard torch cannot prove (module doc).
    torch.export still assumes each size is >= 2 (its range_constraints say 2..: 0/1
    specialization); the one decision it takes on that assumption (found by exporting under
    torch.fx.experimental._config.backed_size_oblivious, which turns it into a guard n != 1) is that
    attend_grouped's reshape of q copies rather than views, which gives the same values. One token
    through verify is checked against eager PyTorch (tests/test_verify_lengths.py) and matched the
    old static decode method bit for bit (shipped pair, XNNPACK 8da8w).
    """
    dynamic = torch.export.Dim.DYNAMIC
    (low, high), (rows_low, rows_high) = dynamic_lengths(k, prefill_chunk)["verify"], logits_rows(k)
    return {"verify": ({1: dynamic(min=low, max=high)}, None, {0: dynamic(min=rows_low, max=rows_high)})}


# --------------------------------------------------------------------------- export


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_info(name: str, value, bounds: dict) -> dict:
    """A tensor's name, dtype and shape; a symbolic size is given by its largest value (`bounds`:
    symbol -> (lowest, highest))."""
    shape = [int(d) if isinstance(d, int) else bounds[str(d.node.expr)][1] for d in value.shape]
    return {"name": name, "shape": shape, "dtype": _dtype_name(value.dtype)}


def _signature(name: str, program, lengths: tuple[int, int] | None = None) -> dict:
    """Input/output names, shapes and dtypes of an ExportedProgram's user inputs and outputs; with
    `lengths`, the token counts of a method whose token count is dynamic (its shapes: the highest)."""
    in_names, out_names = method_io(name)
    sig = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = [placeholders[n].meta["val"] for n in sig.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = output_node.args[0]
    user_outputs = [o.meta["val"] for o, spec in zip(outputs, sig.output_specs) if spec.kind.name == "USER_OUTPUT"]
    assert len(user_inputs) == len(in_names) and len(user_outputs) == len(out_names), name
    bounds = {str(sym): (int(r.lower), int(r.upper)) for sym, r in program.range_constraints.items()}
    out = {
        "inputs": [_tensor_info(n, v, bounds) for n, v in zip(in_names, user_inputs)],
        "outputs": [_tensor_info(n, v, bounds) for n, v in zip(out_names, user_outputs)],
    }
    if lengths is not None:
        assert out["inputs"][0]["shape"][1] == lengths[1], (name, out["inputs"][0], lengths)
        out["lengths"] = list(lengths)
    return out


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
    """Method -> non_const_buffer_sizes: [0 (reserved), activations arena, shared mutable arena]
    (the compute methods; the constant metadata methods plan no memory)."""
    return {plan.name: list(plan.non_const_buffer_sizes) for plan in executorch_program.execution_plan
            if plan.name not in PROGRAM_METADATA}


def inspect_program(pte_path: str | Path) -> dict:
    """Read back a .pte's memory plan: per method its planned arena sizes, its operators, and
    where each named mutable buffer lives (memory id, offset), straight from the serialized program.
    The constant metadata methods (manifest.PROGRAM_METADATA) are left out: they compute nothing."""
    program = read_program(Path(pte_path).read_bytes())
    methods = {}
    for plan in program.execution_plan:
        if plan.name in PROGRAM_METADATA:
            continue
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
    draft_chains: tuple[int, ...] | None = None,
    metadata: dict[str, int | list[int]] | None = None,
    consume: bool = False,
    progress: bool = True,
) -> dict:
    """Export the pair to out_path (written to a temporary name, renamed at the end).

    `metadata`: constant methods to add (manifest.program_metadata: K, context, vocabulary, ...).

    `methods` keeps a subset of verify / draft / draft_chain_n (default all): a draft-only
    program is what `bench head` times. `draft_chains`: the draft_chain_n lengths (default 2..k).

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
    modules = method_modules(target, drafter, k, prefill_chunk, draft_chains)
    if methods is not None:
        unknown = sorted(set(methods) - set(modules))
        if unknown or not methods:
            raise ExportError(f"unknown method(s) {unknown or methods}; expected a subset of {', '.join(modules)}.")
        modules = {name: modules[name] for name in methods}
    step = _Progress(progress, total=len(modules) + 3)

    layout = cache_layout(target, max_seq_len)
    weight_bytes = _weight_bytes(target, drafter)
    exported, dynamic, lengths = {}, dynamic_shapes(k, prefill_chunk), dynamic_lengths(k, prefill_chunk)
    with torch.no_grad(), delegable_ops(target, drafter, batched_matmuls=backend == "xnnpack"):
        for name, (module, inputs) in modules.items():
            exported[name] = torch.export.export(module.eval(), inputs, dynamic_shapes=dynamic.get(name), strict=False)
            step(f"torch.export {name}")
        signatures = {name: _signature(name, ep, lengths.get(name)) for name, ep in exported.items()}
        if consume:
            del modules, module
            release_weights(target, drafter)

        partitioner = [xnnpack_partitioner()] if backend == "xnnpack" else []
        with patched_for_export():  # executorch 1.5.1 workarounds, all in export/executorch_compat.py
            edge = to_edge_transform_and_lower(exported, transform_passes=[InferTheSymbolicDimOfViews()],
                                               partitioner=partitioner, compile_config=edge_compile_config(),
                                               constant_methods=metadata)
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
                    # (Unless a view outside a delegate reads a written cache: executorch_compat.reinplace_is_safe.)
                    run_reinplace_pass=reinplace_is_safe(edge),
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
