"""The ONNX path stores torchao's grid: quantize.nbits modules exported by torch.onnx.export and run by
onnxruntime reproduce exactly the weights the .pte's torchao quantization dequantizes to, for every
scheme, and the modules' own eager ops agree with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mtp_edge.export.onnx_contrib import contrib_translations
from mtp_edge.quantize.modules import grid_integers, grid_weight
from mtp_edge.quantize.nbits import block_quantized, pack_rows, shape_rule

K, N, ROWS = 64, 48, 40


class _Pair(nn.Module):
    """y = x @ W.T (a linear), e = table[ids] (an embedding) and r = W[ids] (a linear's rows: an untied head)."""

    def __init__(self, weight, table, linear: str, embedding: str, group: int):
        super().__init__()
        self.linear = block_quantized("linear", *pack_rows(weight, linear, group), linear, group)
        self.embedding = block_quantized("embedding", *pack_rows(table, embedding, group), embedding, group)

    def forward(self, x, ids):
        return self.linear(x), self.embedding(ids), self.linear.rows_of(ids)


def _run(module: nn.Module, x, ids, path) -> list[np.ndarray]:
    program = torch.onnx.export(module, (x, ids), dynamo=True, verbose=False, custom_translation_table=contrib_translations())
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    ops = sorted(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops.count("MatMulNBits") == 1 and ops.count("GatherBlockQuantized") == 2, ops
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[1] == K
                   for i in onnx.load(str(path)).graph.initializer)  # no fp32 weight in the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy(), "ids": ids.numpy()})


@pytest.mark.parametrize("linear,embedding,group", [("8da4w", "emb4", 32), ("int4", "emb4", 64), ("8da8w", "emb8", 32)])
@pytest.mark.parametrize("on_grid", [False, True], ids=["random", "qat"])
def test_onnxruntime_reads_torchaos_integers(linear, embedding, group, on_grid, tmp_path):
    gen = torch.Generator().manual_seed(group)
    weight = torch.randn(N, K, generator=gen) * 0.05  # nn.Linear layout [out, in]
    table = torch.randn(ROWS, K, generator=gen)
    if on_grid:  # a QAT checkpoint: already on the grid, must be stored exactly as it is
        weight = grid_weight(*grid_integers(weight, linear, group))
        table = grid_weight(*grid_integers(table, embedding, group))
    module = _Pair(weight, table, linear, embedding, group)
    # One-hot rows read the dequantized weight out of MatMulNBits exactly (every other product is 0).
    x, ids = torch.eye(K), torch.arange(ROWS).view(2, -1)
    y, e, r = _run(module, x, ids, tmp_path / "grid.onnx")
    expected_weight = grid_weight(*grid_integers(weight, linear, group))
    expected_table = grid_weight(*grid_integers(table, embedding, group))
    assert torch.equal(torch.from_numpy(y), expected_weight.T)
    assert torch.equal(torch.from_numpy(e).flatten(0, 1), expected_table)
    assert torch.equal(torch.from_numpy(r).flatten(0, 1), expected_weight[:ROWS])
    if on_grid:
        assert torch.equal(torch.from_numpy(y), weight.T) and torch.equal(torch.from_numpy(e).flatten(0, 1), table)
    # The modules' eager ops (what PyTorch runs) give onnxruntime's values.
    eager = module(x, ids)
    for ours, theirs in zip(eager, (y, e, r)):
        torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=1e-6)


def test_what_the_operators_cannot_hold_is_named():
    assert shape_rule("linear", "8da4w", 32, 64) is None and shape_rule("linear", "8da8w", 0, 96) is None
    assert shape_rule("linear", "8da4w", 32, 48) == "48 columns are not a multiple of the block of 32"
    assert "power-of-two block of at least 16" in shape_rule("embedding", "emb4", 8, 64)
    assert shape_rule("embedding", "emb8", 0, 40) == "40 columns are not a multiple of the block of 32"


@pytest.mark.parametrize("recipe,shared", [("target=8da4w+emb4", True), ("target=8da8w+emb4", False)])
def test_a_tied_head_packed_like_its_table_shares_its_buffers(tiny_dirs, recipe, shared):
    """Quantized while loading for ONNX, a tied head on the table's grid (8da4w and emb4, both 4-bit in
    blocks of 32) holds the table's own bytes: the full E2B table is 250 MB at 4 bits, once, not twice."""
    from mtp_edge.quantize.recipes import parse_recipe
    from mtp_edge.quantize.streaming import load_quantized_pair

    target, _, _ = load_quantized_pair(*tiny_dirs, 20, parse_recipe(recipe, "onnx"), progress=False, form="onnx")
    head, table = target.lm_head, target.embed_tokens
    same = [h.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for h, t in
            ((head.data, table.data), (head.scales, table.scales))]
    assert same == [shared, shared]
    # Shared or not, the head's rows are the table's rows wherever the grids agree.
    ids = torch.arange(8)
    assert torch.equal(head.rows_of(ids), table(ids)) == shared


def test_each_format_keeps_fp32_what_its_operators_cannot_hold():
    """plan_model takes the format's shape rule: 8-bit rows go to onnxruntime in blocks of 32 columns,
    which torchao's per-row int8 does not need, so a 40-wide emb8 table is quantized for the .pte only."""
    from mtp_edge.quantize.modules import plan_model
    from mtp_edge.quantize.recipes import parse_recipe

    model = nn.ModuleDict({"narrow": nn.Linear(48, 8), "wide": nn.Linear(64, 8), "table": nn.Embedding(10, 40)})
    scheme = parse_recipe("target=8da4w+emb8").target
    pte_plan, pte_report = plan_model(model, scheme)
    onnx_plan, onnx_report = plan_model(model, scheme, shape_rule)
    assert sorted(pte_plan) == ["table", "wide"] and sorted(onnx_plan) == ["wide"]
    assert pte_report["skipped"] == {"narrow": "in_features 48 is not a multiple of group size 32"}
    assert onnx_report["skipped"] == {"narrow": "48 columns are not a multiple of the block of 32",
                                      "table": "40 columns are not a multiple of the block of 32"}
    assert onnx_report["embeddings"] == [] and list(onnx_report["linears"]) == ["wide"]
