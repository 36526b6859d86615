"""Every workaround of ExecuTorch 1.5.1 internals the .pte export relies on, in one module.

export/pte.py is the recipe (wrap the methods, torch.export, lower, serialize); what it needs from
executorch beyond the public API lives here, each piece a named function or context manager whose
docstring says what upstream does, why it is patched and what it measured:

  patched_for_export()              the context the lowering and to_executorch run in; enters
    weights_shared_while_lowering()   XnnpackBackend.copy_exported_program_for_preprocess shares tensors
    embedding_tables_packed_once()    a CPU kernel on quant_fusion::_pack_embedding_weight
    decomposed_in_one_pass()          XnnpackPartitioner.ops_to_not_decompose drops a check that passes everywhere
    xnnpack_passes_that_apply()       XNNPACKPassManager skips passes whose operators a partition lacks
  release_weights(*modules)         after torch.export: the modules drop their weights (nn.Module._parameters/_buffers)
  release_lowered_copies(edge)      after lowering:
    drop_merged_delegate_data(edge)   LoweredBackendModule._named_data_store_output = None
    release_delegated_weights(edge)   LoweredBackendModule.original_module's weights stubbed
  xnnpack_partitioner()             tanh-GELU kept out of XNNPACK (it drops `approximate`)
  edge_compile_config()             EdgeCompileConfig(_check_ir_validity=False)
  reinplace_is_safe(edge)           ExecutorchBackendConfig.run_reinplace_pass only where it computes right
  read_program(data)                executorch.exir._serialize._program.deserialize_pte_binary

None of them changes the program but reinplace_is_safe (which only turns in-place writes off where
they would compute wrong values): the .pte bytes are the same with or without them (checked on
fp32 XNNPACK, 8da4w+emb4 XNNPACK and portable exports when they were gathered here). Each has a test
in tests/test_executorch_compat.py that fails when the upstream behaviour it works around changes,
so that an ExecuTorch upgrade shows which of them are obsolete or must be re-checked.

Measured together, on this project's 2-core 24 GiB machine: before the first two (the shared copy
and the dropped merged data) the full E2B export with the default recipe (8da4w+emb4) was OOM-killed
at 22.8 GiB in to_executorch; with them it peaked at 19.12 GiB; packing each table once, consuming
the modules' weights and releasing the delegated weights then took it to 15.41 GiB (README, "Full E2B
pair"), and a 2-layer E2B slice's export from 3.61 to 3.11 GiB (byte-identical .pte).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
from collections.abc import Iterator

import torch
from torch import nn

# Rows of an embedding table packed at a time by embedding_tables_packed_once (bounds its temporaries).
PACK_ROWS = 16384


# --------------------------------------------------------------------------- lowering


@contextlib.contextmanager
def _class_attribute(cls, name: str, value) -> Iterator[None]:
    """cls.name = value for the block; on exit the class's own attribute comes back (or, where the
    class only inherited one, the inherited one shows through again)."""
    own = cls.__dict__.get(name)
    setattr(cls, name, value)
    try:
        yield
    finally:
        if own is None:
            delattr(cls, name)
        else:
            setattr(cls, name, own)


@dataclasses.dataclass
class LoweringCopies:
    """What weights_shared_while_lowering did: how many delegated programs it copied (sharing tensors)."""

    programs: int = 0


@contextlib.contextmanager
def weights_shared_while_lowering() -> Iterator[LoweringCopies]:
    """Lower to XNNPACK without a copy of the weights per delegated program.

    Upstream: before a backend preprocesses a partition, executorch 1.5.1's to_backend copies the
    partition's program with `BackendDetails.copy_exported_program_for_preprocess`, which is
    `copy.deepcopy(edge_program)` -- weights included -- and XnnpackBackend does not override it.
    At E2B size that is several GB per delegated method, all alive at once (prefill, verify and
    decode each delegate the whole target).

    Patch: while the context is active, XnnpackBackend's copy deep-copies the graph and the
    state-dict mapping but shares the weight tensors, as executorch's own CUDA backend does in its
    low-memory mode. This is safe because XNNPACK's preprocessing passes replace state-dict entries
    rather than writing into the tensors (tested: lowering under the patch leaves the input
    program's weights untouched and gives the same delegate bytes).

    Measured: with drop_merged_delegate_data, what took the full E2B export from an OOM kill at
    22.8 GiB (to_executorch, 24 GiB machine) to finishing at a 19.12 GiB peak.

    Yields a LoweringCopies counting the programs copied through the patch; the class attribute
    is restored on exit.
    """
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    copies = LoweringCopies()

    def copy_sharing_tensors(cls, program, compile_specs):
        memo = {id(t): t for values in (program.state_dict, program.constants) for t in values.values()
                if isinstance(t, torch.Tensor)}
        copies.programs += 1
        return copy.deepcopy(program, memo)

    with _class_attribute(XnnpackBackend, "copy_exported_program_for_preprocess", classmethod(copy_sharing_tensors)):
        yield copies


def _lowered_modules(edge) -> Iterator:
    """Every LoweredBackendModule (a delegate) of an EdgeProgramManager's methods."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    for name in edge.methods:
        for module in edge.exported_program(name).graph_module.modules():
            if isinstance(module, LoweredBackendModule):
                yield module


def drop_merged_delegate_data(edge) -> None:
    """Free each delegate's own copy of its packed weights once the program manager has merged them.

    Upstream: a LoweredBackendModule keeps the named data its backend serialized (XNNPACK's packed
    weights) in its private `_named_data_store_output`. The EdgeProgramManager merges every lowered
    module's named data into its own store when it is built (deduplicated by content: prefill,
    verify and decode pack the same target weights), and to_executorch emits from that store; the
    per-module copies stay alive until the export ends anyway.

    Patch: set `_named_data_store_output = None` on every lowered module (there is no public
    setter), right after to_edge_transform_and_lower returns.

    Measured: with weights_shared_while_lowering, what took the full E2B export from an OOM kill at
    22.8 GiB to a 19.12 GiB peak.
    """
    for module in _lowered_modules(edge):
        module._named_data_store_output = None
    gc.collect()


def release_delegated_weights(edge) -> None:
    """Free the weights a lowered (XNNPACK) module kept from before it was lowered.

    Upstream: each LoweredBackendModule keeps the program it was lowered from (`original_module`),
    state dict included, while the delegate carries its own packed copy of those weights.
    to_executorch still traces that program (with fake tensors) and reads its graph, never its
    values.

    Patch: each plain weight of every `original_module`'s state dict and constants is replaced by a
    zero-stride view of one element: same shape, dtype and device, no memory.

    Measured: one of the three changes (with embedding_tables_packed_once and release_weights) that
    took the full E2B export's peak from 19.12 to 15.41 GiB and a 2-layer E2B slice's from 3.61 to
    3.11 GiB, byte-identical .pte.
    """
    for module in _lowered_modules(edge):
        program = module.original_module
        for values in (program.state_dict, program.constants):
            for key, t in values.items():
                if type(t) in (torch.Tensor, nn.Parameter):
                    stub = torch.zeros((), dtype=t.dtype).expand(t.shape)
                    values[key] = nn.Parameter(stub, requires_grad=False) if isinstance(t, nn.Parameter) else stub
    gc.collect()


def release_lowered_copies(edge) -> None:
    """After to_edge_transform_and_lower: drop_merged_delegate_data, then release_delegated_weights."""
    drop_merged_delegate_data(edge)
    release_delegated_weights(edge)


def release_weights(*modules: nn.Module) -> None:
    """Drop the modules' references to their weights (parameters and constant buffers).

    Upstream: torch.export's ExportedProgram holds the module's own weight tensors (its state dict
    shares them, no copy), so as long as the modules live every weight has two owners; lowering
    (linears, packed into the XNNPACK delegates) and constant propagation (the embedding tables)
    replace the program's entries on the way, but the modules' references keep the originals alive
    until the export ends. (This one reaches into torch's nn.Module, not executorch: there is no
    public way to unregister a parameter or buffer.)

    Patch: every `_parameters` / `_buffers` entry of every submodule is set to None (the modules are
    left without weights; `export_pte(consume=True)` only).

    Measured: one of the three changes (with embedding_tables_packed_once and
    release_delegated_weights) that took the full E2B export's peak from 19.12 to 15.41 GiB and a
    2-layer E2B slice's from 3.61 to 3.11 GiB, byte-identical .pte.
    """
    for module in modules:
        for sub in module.modules():
            for name in list(sub._parameters):
                sub._parameters[name] = None
            for name in list(sub._buffers):
                sub._buffers[name] = None
    gc.collect()


# --------------------------------------------------------------------------- to_executorch


def pack_embedding_weight_op():
    """executorch's `quant_fusion::_pack_embedding_weight` custom op (a torch.library CustomOpDef),
    from the private module that defines it."""
    from executorch.exir.passes._quant_patterns_and_replacements import _pack_embedding_weight

    return _pack_embedding_weight


def pack_4bit_rows(weight: torch.Tensor, rows_per_block: int = PACK_ROWS) -> torch.Tensor:
    """The bytes of `_pack_embedding_weight(weight, 4)` (two int4 values per byte, the even one in the
    high nibble), packed `rows_per_block` rows at a time: temporaries of a block's size, not the table's."""
    rows, cols = weight.shape
    out = torch.empty(rows, cols // 2, dtype=torch.uint8)
    for start in range(0, rows, rows_per_block):
        pairs = weight[start:start + rows_per_block].add(8).view(torch.uint8).view(-1, cols // 2, 2)
        torch.bitwise_or(pairs[:, :, 0] << 4, pairs[:, :, 1], out=out[start:start + rows_per_block])
    return out


@dataclasses.dataclass
class PackedTables:
    """What embedding_tables_packed_once packed: the calls of the packing op it served, and the 4-bit
    tables packed (storage key -> (table, packed table)), emptied when the context exits."""

    calls: int = 0
    tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def embedding_tables_packed_once(rows_per_block: int = PACK_ROWS) -> Iterator[PackedTables]:
    """Pack each 4-bit embedding table once for all methods, a block of rows at a time.

    Upstream: with do_quant_fusion_and_const_prop, to_executorch rewrites every quantized embedding
    lookup into executorch's embedding_4bit kernel and constant-folds the packing of its table
    (`quant_fusion::_pack_embedding_weight`, defined in the private
    `executorch.exir.passes._quant_patterns_and_replacements`), method by method. executorch 1.5.1
    packs a whole table in one go (temporaries of the table's size) and once per method that reads
    it: at E2B size the 2.35B-entry PLE table is read by prefill, verify and decode, and each packed
    copy (1.2 GB) stays alive until the program is written.

    Patch: while the context is active, the op's CPU kernel (registered through torch.library's
    `register_kernel`; upstream's own implementation is the op's `_init_fn`) writes the same bytes
    row block by row block and hands every method the same tensor for the same table (the emitter
    stores equal constants once either way). Other bit widths and shapes go to upstream's
    implementation. The packed tables live in the context (it yields them, a PackedTables); on exit
    they are dropped and upstream's implementation is registered back (registering again only
    replaces the function, so entering twice is harmless; the context is not reentrant).

    Measured: one of the three changes (with release_weights and release_delegated_weights) that
    took the full E2B export's peak from 19.12 to 15.41 GiB and a 2-layer E2B slice's from 3.61 to
    3.11 GiB, byte-identical .pte.
    """
    op = pack_embedding_weight_op()
    upstream = op._init_fn
    packed = PackedTables()

    def pack_once(weight: torch.Tensor, bitwidth: int) -> torch.Tensor:
        packed.calls += 1
        if bitwidth != 4 or weight.dim() != 2 or weight.shape[1] % 2:
            return upstream(weight, bitwidth)
        key = (weight.untyped_storage().data_ptr(), weight.storage_offset(), tuple(weight.shape), tuple(weight.stride()))
        if key not in packed.tables:
            packed.tables[key] = (weight, pack_4bit_rows(weight, rows_per_block))  # the table stays alive: its address is not reused
        return packed.tables[key][1]

    op.register_kernel("cpu", pack_once)
    try:
        yield packed
    finally:
        op.register_kernel("cpu", upstream)
        packed.tables.clear()


@contextlib.contextmanager
def patched_for_export() -> Iterator[None]:
    """The one place the export's patches of executorch are applied: to_edge_transform_and_lower and
    to_executorch run inside it (weights_shared_while_lowering, embedding_tables_packed_once,
    decomposed_in_one_pass, xnnpack_passes_that_apply)."""
    with weights_shared_while_lowering(), embedding_tables_packed_once(), decomposed_in_one_pass(), \
            xnnpack_passes_that_apply():
        yield


# --------------------------------------------------------------------------- lowering time


@contextlib.contextmanager
def decomposed_in_one_pass() -> Iterator[None]:
    """Lower to XNNPACK without decomposing each program twice more than it needs.

    Upstream: to_edge_transform_and_lower (executorch 1.5.1, exir/program/_program.py,
    _gen_edge_manager_for_partitioners) asks each partitioner which operators to keep whole. XNNPACK
    answers with a list (aten.linear, ...) and a per-node check, and a partitioner with a check takes
    the EDGE_DO_NOT_DECOMP path: decompose with the kept operators out of the table, rename the nodes
    that pass the check into a private namespace, decompose again with the full table, rename them
    back. Each decomposition re-traces the whole program on fake tensors. A partitioner without a check
    takes a path that decomposes once, keeping every listed operator.

    Patch: XnnpackPartitioner.ops_to_not_decompose drops its check (returns it as None) when every node
    of a kept operator in the program passes it; then both paths keep the same nodes and give the same
    program, and the one-pass path is taken. Where a node fails the check (e.g. a linear whose weight
    is computed, or the tanh-GELU that xnnpack_partitioner keeps out), the check is returned as upstream
    returns it.

    Measured: with xnnpack_passes_that_apply, a 28% shorter lowering (figures there); byte-identical .pte.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    upstream = XnnpackPartitioner.ops_to_not_decompose

    def ops_to_not_decompose(self, ep):
        ops, check = upstream(self, ep)
        if check is not None:
            kept = set(ops)
            if all(check(node) for node in ep.graph_module.graph.nodes
                   if node.op == "call_function" and node.target in kept):
                return ops, None
        return ops, check

    with _class_attribute(XnnpackPartitioner, "ops_to_not_decompose", ops_to_not_decompose):
        yield


def _xnnpack_pass_operators() -> dict:
    """XNNPACK pass -> the edge operators it rewrites: without one of them in a partition, the pass
    changes nothing but still re-traces the partition. Only passes whose operators no earlier pass in
    XNNPACKPassManager's list creates."""
    from executorch.backends.xnnpack import _passes as xnnpack_passes
    from executorch.exir.dialects._ops import ops as exir_ops

    aten = exir_ops.edge.aten
    batch_norm = {aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default}
    return {
        xnnpack_passes.FuseBatchNormPass: batch_norm,
        xnnpack_passes.DecomposeBatchNorm: batch_norm,
        xnnpack_passes.FuseActivationPass: {aten.relu.default, aten.hardtanh.default},
        xnnpack_passes.DecomposeConcatenate: {aten.cat.default},
        xnnpack_passes.InsertPadQDQPass: {aten.constant_pad_nd.default},
        xnnpack_passes.Conv1dUnsqueezePass: {aten.convolution.default} | batch_norm,  # DecomposeBatchNorm makes convolutions
        xnnpack_passes.PReLUReshapePass: {aten._prelu_kernel.default},
        xnnpack_passes.RemoveGetItemPass: {aten.max_pool2d_with_indices.default, aten.max.dim},
    }


def _xnnpack_pattern_operators() -> dict:
    """XNNPACK pass -> edge operators that every subgraph pattern it matches contains: a partition
    lacking one of them holds no match (SubgraphMatcher maps each pattern node to a node with the
    same target), so the pass changes nothing but still re-traces the partition. Upsampling's
    patterns are one upsample_bilinear2d node; SDPA's (the decomposed scaled_dot_product_attention
    with a boolean mask) both hold any.dim and logical_not, which the pair's attention has not."""
    from executorch.backends.xnnpack import _passes as xnnpack_passes
    from executorch.exir.dialects._ops import ops as exir_ops

    aten = exir_ops.edge.aten
    return {
        xnnpack_passes.ConvertToUpsampleBilinear2d: {aten.upsample_bilinear2d.vec},
        xnnpack_passes.ConvertToSDPAPass: {aten.bmm.default, aten._softmax.default, aten.any.dim, aten.logical_not.default},
    }


def _xnnpack_graph_conditions() -> dict:
    """XNNPACK pass -> a test of the graph the pass is about to run on, False where the pass can only
    re-trace it: decided when the pass runs, because an earlier pass may create what it rewrites
    (ChannelsLastTaggedReshapePass inserts the _to_copy nodes RemoveRedundantCopyPass removes)."""
    from executorch.backends.xnnpack import _passes as xnnpack_passes
    from executorch.exir.dialects._ops import ops as exir_ops

    to_copy = exir_ops.edge.aten._to_copy.default
    return {
        # It only removes _to_copy nodes.
        xnnpack_passes.RemoveRedundantCopyPass: lambda graph: any(node.target == to_copy for node in graph.nodes),
        # It only copies node.meta["custom"] (user annotations) onto quantize/dequantize nodes.
        xnnpack_passes.PropagateCustomMetaPass: lambda graph: any("custom" in node.meta for node in graph.nodes),
    }


def _run_only_where(pass_class: type, applies) -> type:
    """pass_class, except that call() returns the graph unchanged, without re-tracing it, where applies(graph) is False."""
    from torch.fx.passes.infra.pass_base import PassResult

    def call(self, graph_module):
        if applies(graph_module.graph):
            return pass_class.call(self, graph_module)
        return PassResult(graph_module, False)

    return type(pass_class.__name__, (pass_class,), {"call": call, "__module__": __name__})


@contextlib.contextmanager
def xnnpack_passes_that_apply() -> Iterator[None]:
    """Preprocess each XNNPACK partition with only the passes that can change it.

    Upstream: XnnpackBackend.preprocess (executorch 1.5.1) runs XNNPACKPassManager's 17 passes on every
    partition, and each pass ends by re-tracing the partition node by node (_ExportPassBase.call), also
    when it found nothing to rewrite. The shipped pair's program has 36 partitions.

    Patch: XNNPACKPassManager drops, per partition, the passes of _xnnpack_pass_operators whose
    operators the partition does not contain (batch norm, convolution, PReLU, padding, ReLU...), and
    the pattern passes of _xnnpack_pattern_operators that lack one of the operators their patterns all
    need (upsampling, SDPA); the passes of _xnnpack_graph_conditions run as subclasses that return the
    graph as it is, without the re-trace, where their condition says they have nothing to do (removing
    copies, propagating user annotations). A py-spy sample of the shipped pair's export (session 13)
    found these five passes re-tracing in 13% of its samples, with nothing to change.

    Measured with decomposed_in_one_pass, the shipped pair's .pte export with its default recipe
    (8da8w+emb8), with and without both patches run side by side on this 2-core machine: lowering
    262.1 -> 189.5 s, the whole export 294 -> 230 s; the .pte bytes are the same (also on the fp32
    tiny pair). The five passes added in session 13, measured the same way (demo settings, .pte only):
    lowering 164.4 -> 119.2 s, the whole write_bundle 204.5 -> 158.6 s, byte-identical .pte.
    """
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    upstream = XNNPACKPassManager.__init__
    rewrites, patterns = _xnnpack_pass_operators(), _xnnpack_pattern_operators()
    conditional = {p: _run_only_where(p, applies) for p, applies in _xnnpack_graph_conditions().items()}

    def __init__(self, exported_program, passes=None):
        upstream(self, exported_program, passes)
        present = {node.target for node in exported_program.graph_module.graph.nodes if node.op == "call_function"}
        self.passes = [conditional.get(p, p) for p in self.passes
                       if (p not in rewrites or rewrites[p] & present) and (p not in patterns or patterns[p] <= present)]

    with _class_attribute(XNNPACKPassManager, "__init__", __init__):
        yield


# --------------------------------------------------------------------------- partitioner


def xnnpack_partitioner():
    """XNNPACK's partitioner, except that tanh-approximated GELU stays out of the delegate.

    Upstream: executorch 1.5.1 lowers aten.gelu(approximate="tanh") to XNNPACK's exact (erf) GELU,
    dropping the `approximate` argument.

    Patch: a GeluConfig subclass whose constraint check only accepts approximate="none", in place of
    GeluConfig in the partitioner's configs. Gemma 4 uses gelu_pytorch_tanh, so those nodes run in
    the portable kernel, which honours it.

    Measured: on the tiny pair the dropped argument moved fp32 logits by 0.26% of their range.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import GeluConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class ExactGeluConfig(GeluConfig):
        def check_constraints(self, node, ep) -> bool:
            approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
            return approximate == "none" and super().check_constraints(node, ep)

    return XnnpackPartitioner(configs=[ExactGeluConfig if c is GeluConfig else c for c in ALL_PARTITIONER_CONFIGS])


def edge_compile_config():
    """The EdgeCompileConfig the export lowers with: the edge dialect's IR verifier off.

    Upstream: executorch 1.5.1's to_edge_transform_and_lower runs EXIREdgeDialectVerifier after each
    of its pass managers, and the verifier re-runs every graph node by node on fake tensors to check
    the dtypes each edge op allows (exir/verification/verifier.py). Its only public switch is the
    underscore field `_check_ir_validity`, the one ExecuTorch's own LLM export (export_llama) turns
    off the same way.

    Patch: `_check_ir_validity=False`. The graphs are still checked by torch.export, the program is
    the same (the verifier only raises), and the runtime tests run every method.

    Measured: 6.9% of the shipped pair's .pte export (py-spy, 311 s export, 8da8w+emb8).
    """
    from executorch.exir import EdgeCompileConfig

    return EdgeCompileConfig(_check_ir_validity=False)


# --------------------------------------------------------------------------- to_executorch's reinplace pass


def _is_view(node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", None) == "aten.view_copy.default"


def _is_index_put(node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", None) == "aten.index_put.default"


def reinplace_is_safe(edge) -> bool:
    """Whether to_executorch may run its reinplace pass (cache writes in place) on these programs.

    Upstream: executorch 1.5.1's run_reinplace_pass turns index_put into index_put_ on the mutable
    buffer, and its ReplaceViewCopyWithViewPass turns view_copy into a view that aliases its input's
    memory. A view (outside a delegate) of the index_put's result then reads memory that holds neither
    the buffer nor its update: a cache read as `cache.reshape(...)` after `cache.index_copy_(...)`
    gave NaN on the portable backend (tests/test_executorch_compat.py has a 4-line reproduction).
    Inside an XNNPACK delegate the view is the delegate's own reshape of its input, and is right.

    Patch: in place only when no view_copy left outside a delegate reads an index_put result (through
    other views); else the writes stay functional (an index_put into a fresh tensor and a copy back
    into the buffer: right, and a cache copy per write). Every program the export writes today
    qualifies: XNNPACK ones read the cache inside delegates, and portable ones keep the 4-D attention
    matmul, whose expand_copy reads the cache (export/pte.py, delegable_ops); this check keeps a
    future graph from computing wrong values instead.
    """
    for name in edge.methods:
        for node in edge.exported_program(name).graph.nodes:
            if not _is_view(node):
                continue
            source = node.args[0]
            while _is_view(source):
                source = source.args[0]
            if _is_index_put(source):
                return False
    return True


# --------------------------------------------------------------------------- reading a .pte


def read_program(data: bytes):
    """The executorch.exir.schema.Program serialized in a .pte's bytes.

    Upstream: executorch 1.5.1 has no public reader of a .pte's program (its plan, values, memory
    allocation); the serializer's own `deserialize_pte_binary` lives in the private
    `executorch.exir._serialize._program`. Used to read a program's memory plan back
    (export.pte.inspect_program, `mtp-edge inspect`, the tests)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    return deserialize_pte_binary(data).program
