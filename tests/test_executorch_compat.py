"""export/executorch_compat.py's workarounds, held to the executorch (and torch) behaviour they rely on.

Each test pins one upstream behaviour a workaround exists for, on tiny modules and real executorch
objects: when one fails after an ExecuTorch (or torch) upgrade, its docstring names the workaround
that is obsolete or must be re-checked. Tests of the workarounds' own results (the export is the same
with them: byte-identical programs) sit beside them.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from mtp_edge.export import executorch_compat as compat


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _exported(module: nn.Module, *inputs):
    with torch.no_grad():
        return torch.export.export(module.eval(), inputs, strict=False)


def _mlp_program():
    return _exported(_Mlp(), torch.randn(2, 8))


def _lowered(program, partitioner=None):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[partitioner or XnnpackPartitioner()])


def _lowered_modules(edge) -> list:
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    return [m for name in edge.methods for m in edge.exported_program(name).graph_module.modules()
            if isinstance(m, LoweredBackendModule)]


def _weights(program) -> dict[str, torch.Tensor]:
    return {k: v for k, v in program.state_dict.items() if isinstance(v, torch.Tensor)}


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# --------------------------------------------------------------------------- weights_shared_while_lowering


def test_upstream_copy_for_preprocess_still_deep_copies_the_weights():
    """When this fails, weights_shared_while_lowering is obsolete (or must be re-checked): XNNPACK no
    longer copies each delegated program's weights before preprocessing it (it overrides
    copy_exported_program_for_preprocess itself, or upstream's default stopped deep-copying)."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    assert "copy_exported_program_for_preprocess" not in XnnpackBackend.__dict__  # BackendDetails' default
    program = _mlp_program()
    copied = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    weights, copied_weights = _weights(program), _weights(copied)
    assert weights and weights.keys() == copied_weights.keys()
    for name, weight in weights.items():
        assert torch.equal(copied_weights[name], weight) and not _shares(copied_weights[name], weight), name


def test_shared_copy_shares_the_weights_and_lowering_still_goes_through_it():
    """When this fails, weights_shared_while_lowering must be re-checked: executorch's to_backend no
    longer copies delegated programs through copy_exported_program_for_preprocess (the patch is then
    dead code), or the patched copy no longer shares the weights while copying the graph."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    program = _mlp_program()
    with compat.weights_shared_while_lowering() as copies:
        copied = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
        assert copies.programs == 1
        _lowered(_mlp_program())
        assert copies.programs > 1  # the lowering called it for its delegated program
    assert copied.graph_module is not program.graph_module and copied.state_dict is not program.state_dict
    for name, weight in _weights(program).items():
        assert _shares(copied.state_dict[name], weight), name
    assert "copy_exported_program_for_preprocess" not in XnnpackBackend.__dict__  # restored on exit


def test_xnnpack_preprocess_leaves_shared_weights_untouched():
    """When this fails, weights_shared_while_lowering is no longer safe: XNNPACK's preprocessing now
    writes into the weight tensors (the shared copy would change the caller's program) or lowers a
    shared copy differently from a deep one."""
    program = _mlp_program()
    before = {name: weight.clone() for name, weight in _weights(program).items()}
    with compat.weights_shared_while_lowering():
        shared = _lowered(program).to_executorch().buffer
    for name, weight in _weights(program).items():
        assert torch.equal(weight, before[name]), name
    assert shared == _lowered(_mlp_program()).to_executorch().buffer


# --------------------------------------------------------------------------- drop_merged_delegate_data


def test_lowered_modules_still_keep_their_merged_named_data():
    """When this fails, drop_merged_delegate_data is obsolete or must be re-checked: a lowered module
    no longer keeps the named data (XNNPACK's packed weights) in `_named_data_store_output` after the
    EdgeProgramManager has merged it, or the manager's store no longer holds all of it."""
    edge = _lowered(_mlp_program())
    modules = _lowered_modules(edge)
    assert modules
    merged = edge._named_data_store.get_named_data_store_output()
    for module in modules:
        own = module._named_data_store_output
        assert own is not None and own is module.named_data_store_output
        assert own.pte_data and sum(len(own.buffers[e.buffer_index]) for e in own.pte_data.values()) > 0
        assert set(own.pte_data) <= set(merged.pte_data)
    compat.drop_merged_delegate_data(edge)
    assert all(module.named_data_store_output is None for module in modules)


# --------------------------------------------------------------------------- release_delegated_weights


def test_lowered_modules_still_hold_their_unpacked_weights():
    """When this fails, release_delegated_weights is obsolete or must be re-checked: a lowered
    module's `original_module` no longer holds the weights it was lowered from."""
    edge = _lowered(_mlp_program())
    weights = {}
    for module in _lowered_modules(edge):
        weights.update(_weights(module.original_module))
    assert weights
    for name, weight in weights.items():
        assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size() > 0, name
    compat.release_delegated_weights(edge)
    for module in _lowered_modules(edge):
        for name, stub in _weights(module.original_module).items():
            assert stub.shape == weights[name].shape and stub.dtype == weights[name].dtype
            assert stub.untyped_storage().nbytes() == stub.element_size(), name


def test_to_executorch_reads_no_delegated_weights_or_merged_copies():
    """When this fails, release_lowered_copies (drop_merged_delegate_data, release_delegated_weights)
    is no longer safe: to_executorch now reads a lowered module's own named data or its original
    weights' values, so the program changes once they are freed."""
    edge = _lowered(_mlp_program())
    compat.release_lowered_copies(edge)
    assert edge.to_executorch().buffer == _lowered(_mlp_program()).to_executorch().buffer


# --------------------------------------------------------------------------- release_weights


def test_exported_program_still_holds_the_modules_own_weights():
    """When this fails, release_weights must be re-checked: torch.export no longer hands the module's
    own weight tensors to the program (a copy: the modules' references then free nothing the program
    uses), or nn.Module no longer keeps them in `_parameters` / `_buffers`."""
    module = _Mlp()
    module.register_buffer("offset", torch.ones(4))
    module.forward = lambda x: _Mlp.forward(module, x) + module.offset
    x = torch.randn(2, 8)
    expected = module(x)
    program = _exported(module, x)
    owned = dict(module.named_parameters()) | dict(module.named_buffers())
    for name, weight in owned.items():
        assert program.state_dict[name] is weight, name
    compat.release_weights(module)
    assert not list(module.parameters()) and not list(module.buffers())
    assert torch.allclose(program.module()(x), expected)  # the program alone owns them now


# --------------------------------------------------------------------------- embedding_tables_packed_once


def test_pack_embedding_weight_is_still_the_private_custom_op():
    """When this fails, embedding_tables_packed_once must be re-checked: executorch's
    `quant_fusion::_pack_embedding_weight` moved, changed its signature, or is no longer a torch.library
    custom op whose upstream implementation is `_init_fn` and whose CPU kernel can be registered."""
    op = compat.pack_embedding_weight_op()
    assert isinstance(op, torch.library.CustomOpDef) and callable(op._init_fn) and callable(op.register_kernel)
    schema = torch.ops.quant_fusion._pack_embedding_weight.default._schema
    assert str(schema) == "quant_fusion::_pack_embedding_weight(Tensor weight, SymInt bitwidth) -> Tensor"


def test_upstream_packs_a_fresh_table_per_call_in_the_layout_reproduced():
    """When this fails, embedding_tables_packed_once is obsolete or must be re-checked: upstream's
    packing now reuses a packed table across calls, or packs 4-bit tables in another layout than
    pack_4bit_rows reproduces (two values per byte, the even one in the high nibble)."""
    table = torch.randint(-8, 8, (37, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    upstream = compat.pack_embedding_weight_op()._init_fn
    first, again = upstream(table, 4), upstream(table, 4)
    assert first.data_ptr() != again.data_ptr()
    assert torch.equal(first, compat.pack_4bit_rows(table, rows_per_block=8))
    assert first.shape == (37, 32) and first[0, 0] == ((int(table[0, 0]) + 8) << 4 | (int(table[0, 1]) + 8))


class _Lookup(nn.Module):
    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, ids):
        return self.embedding(ids)


def test_quant_fusion_packs_each_4bit_table_once_per_method():
    """When this fails, embedding_tables_packed_once is obsolete or must be re-checked: to_executorch's
    quant fusion no longer packs a 4-bit embedding table through `_pack_embedding_weight` once per
    method that reads it (2 methods: 2 packings of the one table)."""
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from torchao.quantization.quant_api import quantize_

    from mtp_edge.quantize.modules import embedding_config

    torch.manual_seed(0)
    embedding = nn.Embedding(64, 32)
    quantize_(embedding, embedding_config("emb4", 32), filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))
    ids = torch.zeros(1, 3, dtype=torch.long)
    programs = {name: _exported(_Lookup(embedding), ids) for name in ("first", "second")}
    edge = to_edge_transform_and_lower(programs)
    with compat.embedding_tables_packed_once() as packed:
        edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
        assert packed.calls == 2 and len(packed.tables) == 1


def test_packing_context_restores_upstream_packing():
    """When this fails, embedding_tables_packed_once no longer hands the op back to upstream's
    implementation on exit (torch.library's register_kernel changed how a kernel is replaced)."""
    table = torch.randint(-8, 8, (16, 32), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    pack = torch.ops.quant_fusion._pack_embedding_weight
    with compat.embedding_tables_packed_once():
        inside = pack(table, 4)
        assert pack(table, 4).data_ptr() == inside.data_ptr()
    with compat.embedding_tables_packed_once():  # entering again re-registers harmlessly
        assert pack(table, 4).data_ptr() != inside.data_ptr()  # a new context packs afresh
    after, again = pack(table, 4), pack(table, 4)
    assert torch.equal(after, inside) and after.data_ptr() != again.data_ptr()


# --------------------------------------------------------------------------- xnnpack_partitioner


class _TanhGelu(nn.Module):
    def forward(self, x):
        return nn.functional.gelu(x, approximate="tanh")


def _run(edge, x: torch.Tensor) -> torch.Tensor:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(edge.to_executorch().buffer)
    return program.load_method("forward").execute([x])[0]


def test_xnnpack_still_drops_the_tanh_gelu_approximation():
    """When this fails, xnnpack_partitioner's ExactGeluConfig is obsolete: executorch's XNNPACK
    delegate now computes gelu(approximate="tanh") as asked (or no longer takes it), and the stock
    partitioner can be used again."""
    x = torch.linspace(-4, 4, 161).reshape(1, -1)
    tanh, exact = nn.functional.gelu(x, approximate="tanh"), nn.functional.gelu(x)
    assert (tanh - exact).abs().max() > 1e-4
    out = _run(_lowered(_exported(_TanhGelu(), x)), x)
    assert torch.allclose(out, exact, atol=1e-5) and not torch.allclose(out, tanh, atol=1e-5)


def test_xnnpack_partitioner_keeps_tanh_gelu_portable():
    """When this fails, xnnpack_partitioner must be re-checked: its GeluConfig subclass no longer keeps
    tanh-GELU out of the delegate (the config classes or their check_constraints changed)."""
    x = torch.linspace(-4, 4, 161).reshape(1, -1)
    edge = _lowered(_exported(_TanhGelu(), x), compat.xnnpack_partitioner())
    assert not _lowered_modules(edge)
    assert torch.allclose(_run(edge, x), nn.functional.gelu(x, approximate="tanh"), atol=1e-6)
    exact = _lowered(_exported(nn.GELU(), x), compat.xnnpack_partitioner())
    assert _lowered_modules(exact)  # exact GELU is still delegated


# --------------------------------------------------------------------------- edge_compile_config


def test_edge_verifier_still_runs_by_default_and_the_config_turns_it_off(monkeypatch):
    """When this fails, edge_compile_config must be re-checked: to_edge_transform_and_lower no longer
    runs the edge dialect's node-by-node dtype check by default (nothing to turn off any more), or
    `_check_ir_validity=False` stopped turning it off."""
    import dataclasses

    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.exir.verification import verifier

    calls = []
    check = verifier._check_tensor_args_matching_op_allowed_dtype

    def counting(*args, **kwargs):
        calls.append(1)
        return check(*args, **kwargs)

    monkeypatch.setattr(verifier, "_check_tensor_args_matching_op_allowed_dtype", counting)
    assert "_check_ir_validity" in {f.name for f in dataclasses.fields(EdgeCompileConfig)}
    to_edge_transform_and_lower(_mlp_program())
    assert calls
    calls.clear()
    to_edge_transform_and_lower(_mlp_program(), compile_config=compat.edge_compile_config())
    assert not calls


# --------------------------------------------------------------------------- reinplace_is_safe


class _CacheRead(nn.Module):
    """A cache written in place, then read through a reshape: what attend_grouped does."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(1, 2, 8, 4))

    def forward(self, x, pos, q):
        self.cache.index_copy_(2, pos, x)
        return torch.bmm(self.cache.reshape(2, 8, 4), q)


def _cache_read_program(partitioner, reinplace: bool | None):
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.runtime import Runtime

    inputs = (torch.randn(1, 2, 1, 4), torch.tensor([3]), torch.randn(2, 4, 3))
    with torch.no_grad():
        want = _CacheRead()(*inputs)
    edge = to_edge_transform_and_lower(_exported(_CacheRead(), *inputs), partitioner=partitioner)
    safe = compat.reinplace_is_safe(edge)
    et = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
                                                    emit_mutable_buffer_names=True,
                                                    run_reinplace_pass=safe if reinplace is None else reinplace))
    got = Runtime.get().load_program(et.buffer).load_method("forward").execute(list(inputs))[0]
    return safe, bool(torch.allclose(got, want, atol=1e-6))


def test_reinplace_still_breaks_a_view_of_the_written_buffer():
    """When this fails, reinplace_is_safe is obsolete: executorch's reinplace pass and its view_copy ->
    view replacement now agree (a view of a buffer written in place reads the written buffer), and
    every program can take the in-place writes."""
    assert _cache_read_program([], reinplace=False) == (False, True)
    assert _cache_read_program([], reinplace=True) == (False, False)


def test_reinplace_is_safe_where_the_view_is_delegated():
    """reinplace_is_safe: the portable program above is refused, an XNNPACK one (the reshape inside
    the delegate) takes the in-place writes and computes right."""
    assert _cache_read_program([compat.xnnpack_partitioner()], reinplace=None) == (True, True)
    assert _cache_read_program([], reinplace=None) == (False, True)


# --------------------------------------------------------------------------- read_program


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(4))

    def forward(self, x):
        self.total.add_(x)
        return self.total * 2


def test_deserialize_pte_binary_still_reads_the_memory_plan(tmp_path):
    """When this fails, read_program (and export.pte.inspect_program) must be re-checked: the private
    `executorch.exir._serialize._program.deserialize_pte_binary` moved or changed what it returns (a
    PTEFile whose program has execution_plan, values with allocation info and buffer names, chains)."""
    from executorch.exir import ExecutorchBackendConfig, to_edge
    from executorch.exir.passes import MemoryPlanningPass

    from mtp_edge.export.pte import inspect_program

    x = torch.ones(4)
    et = to_edge(_exported(_Counter(), x)).to_executorch(ExecutorchBackendConfig(
        memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True), emit_mutable_buffer_names=True))
    program = compat.read_program(et.buffer)
    assert [plan.name for plan in program.execution_plan] == ["forward"]
    path = tmp_path / "counter.pte"
    path.write_bytes(et.buffer)
    method = inspect_program(path)["forward"]
    assert method["non_const_buffer_sizes"] == list(program.execution_plan[0].non_const_buffer_sizes)
    assert method["mutable_buffers"]["total"]["shape"] == [4]
    assert method["mutable_buffers"]["total"]["memory_id"] is not None
    assert any("add" in op for op in method["operators"])


# --------------------------------------------------------------------------- decomposed_in_one_pass, xnnpack_passes_that_apply


class _Block(nn.Module):
    """What the pair's graphs hold around their linears: a norm, tanh-GELU, a concatenation, ReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        h = self.down(nn.functional.gelu(self.up(self.norm(x)), approximate="tanh"))
        return torch.relu(torch.cat([h, x], dim=-1))


def _program_bytes(module: nn.Module, x: torch.Tensor, patched: bool) -> bytes:
    from executorch.exir import to_edge_transform_and_lower

    context = compat.patched_for_export() if patched else contextlib.nullcontext()
    with context:
        edge = to_edge_transform_and_lower(_exported(module, x), partitioner=[compat.xnnpack_partitioner()])
        return edge.to_executorch().buffer


def test_xnnpack_partitioner_still_asks_for_the_two_pass_decomposition():
    """When this fails, decomposed_in_one_pass is obsolete: XNNPACK's partitioner no longer returns a
    per-node check with the operators it keeps whole, so to_edge_transform_and_lower already takes its
    one-pass path."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.program._program import _can_skip_using_EDGE_DO_NOT_DECOMP

    program = _mlp_program().run_decompositions({})
    assert not _can_skip_using_EDGE_DO_NOT_DECOMP(XnnpackPartitioner(), program)
    with compat.decomposed_in_one_pass():
        assert _can_skip_using_EDGE_DO_NOT_DECOMP(XnnpackPartitioner(), program)
    assert not _can_skip_using_EDGE_DO_NOT_DECOMP(XnnpackPartitioner(), program)


def test_the_check_stays_where_a_kept_node_fails_it():
    """A linear whose weight is computed is not XNNPACK's: the partitioner keeps its per-node check."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class ComputedWeight(nn.Module):
        def forward(self, x, w):
            return nn.functional.linear(x, w * 2)

    program = _exported(ComputedWeight(), torch.randn(2, 8), torch.randn(4, 8)).run_decompositions({})
    with compat.decomposed_in_one_pass():
        assert XnnpackPartitioner().ops_to_not_decompose(program)[1] is not None


def test_xnnpack_still_runs_every_pass_on_every_partition():
    """When this fails, xnnpack_passes_that_apply is obsolete or must be re-checked: XNNPACK's pass
    manager no longer runs its full pass list on a partition without batch norm, convolution or
    padding (or a pass it skips was renamed)."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    program = _mlp_program()
    assert set(compat._xnnpack_pass_operators()) <= set(XNNPACKPassManager(program).passes)
    with compat.xnnpack_passes_that_apply():
        kept = XNNPACKPassManager(program).passes
    assert compat._xnnpack_pass_operators().keys() - set(kept)
    assert set(compat._xnnpack_pass_operators()) <= set(XNNPACKPassManager(program).passes)


def test_xnnpack_pattern_passes_still_need_the_operators_they_are_skipped_without():
    """When this fails, xnnpack_passes_that_apply must be re-checked: a pattern of XNNPACK's upsampling
    or SDPA pass no longer contains every operator the patch requires before running that pass."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    needs = compat._xnnpack_pattern_operators()
    graphs = {"ConvertToUpsampleBilinear2d": list(bilinear_2d.get_graphs_dict()), "ConvertToSDPAPass": list(sdpa.get_graphs())}
    for pass_, operators in needs.items():
        assert graphs[pass_.__name__], pass_
        for pattern in graphs[pass_.__name__]:
            targets = {node.target for node in pattern.graph.nodes if node.op == "call_function"}
            assert operators <= targets, (pass_.__name__, operators - targets)
    with compat.xnnpack_passes_that_apply():
        kept = _pass_list(_mlp_program())
    assert not set(needs) & set(kept)


def test_xnnpack_passes_with_nothing_to_do_return_the_graph_untraced():
    """When this fails, xnnpack_passes_that_apply must be re-checked: XNNPACK's pass manager no longer
    lists the passes _xnnpack_graph_conditions wraps. Under the patch each runs as its subclass, which
    hands back the very graph module (no re-trace) where its condition finds nothing to do."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack._passes.xnnpack_pass import XNNPACKPass

    program = _mlp_program()
    conditions = compat._xnnpack_graph_conditions()
    assert set(conditions) <= set(XNNPACKPassManager(program).passes)
    with compat.xnnpack_passes_that_apply():
        kept = XNNPACKPassManager(program).passes
    wrapped = [p for p in kept if p.__module__ == compat.__name__]
    assert sorted(p.__name__ for p in wrapped) == sorted(p.__name__ for p in conditions)
    for p in wrapped:
        assert not conditions[p.__mro__[1]](program.graph_module.graph)
        instance = p(program) if issubclass(p, XNNPACKPass) else p()
        result = instance.call(program.graph_module)
        assert result.graph_module is program.graph_module and not result.modified


def _pass_list(program) -> list:
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    return XNNPACKPassManager(program).passes


@pytest.mark.parametrize("module", [_Mlp, _Block])
def test_lowering_patches_give_the_same_program(module):
    """Both lowering-time patches change how long lowering takes, not what it produces."""
    x = torch.randn(3, 8)
    assert _program_bytes(module(), x, patched=True) == _program_bytes(module(), x, patched=False)


# --------------------------------------------------------------------------- patched_for_export


def test_patched_for_export_applies_its_patches_and_undoes_them():
    """When this fails, patched_for_export no longer enters weights_shared_while_lowering,
    embedding_tables_packed_once, decomposed_in_one_pass and xnnpack_passes_that_apply, or leaves one
    of them applied after the export."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    table = torch.randint(-8, 8, (16, 32), dtype=torch.int8, generator=torch.Generator().manual_seed(2))
    pack = torch.ops.quant_fusion._pack_embedding_weight
    upstream = XnnpackPartitioner.ops_to_not_decompose, XNNPACKPassManager.__init__
    with compat.patched_for_export():
        assert "copy_exported_program_for_preprocess" in XnnpackBackend.__dict__
        assert pack(table, 4).data_ptr() == pack(table, 4).data_ptr()
        assert (XnnpackPartitioner.ops_to_not_decompose, XNNPACKPassManager.__init__) != upstream
    assert "copy_exported_program_for_preprocess" not in XnnpackBackend.__dict__
    assert (XnnpackPartitioner.ops_to_not_decompose, XNNPACKPassManager.__init__) == upstream
    assert pack(table, 4).data_ptr() != pack(table, 4).data_ptr()


@pytest.mark.parametrize("name", ["inspect_program", "xnnpack_partitioner", "release_weights"])
def test_pte_keeps_its_public_names(name):
    """export.pte still offers what other modules import from it."""
    from mtp_edge.export import pte

    assert callable(getattr(pte, name))
