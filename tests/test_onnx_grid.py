"""The ONNX path stores torchao's 4-bit grid: a graph quantized by quantize.graphs, run by onnxruntime,
reproduces exactly the weights the .pte's torchao quantization dequantizes to."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mtp_edge.quantize.graphs import quantize_graph
from mtp_edge.quantize.modules import grid_integers, grid_weight
from mtp_edge.quantize.recipes import parse_recipe

K, N, ROWS = 64, 48, 40


def _graph(weight_kn: np.ndarray, table: np.ndarray) -> onnx.ModelProto:
    """y = x @ W (a target linear, as torch's exporter records it) and e = table[ids] (the target's embedding)."""
    matmul = helper.make_node("MatMul", ["x", "target.layers.0.mlp.up_proj.weight.T"], ["y"], name="up_proj_matmul")
    matmul.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", "target.layers.0.mlp.up_proj", "linear"]))
    gather = helper.make_node("Gather", ["target.embed_tokens.weight", "ids"], ["e"], name="embed_gather")
    graph = helper.make_graph(
        [matmul, gather], "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K]), helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N]), helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, K])],
        [numpy_helper.from_array(weight_kn, "target.layers.0.mlp.up_proj.weight.T"),
         numpy_helper.from_array(table, "target.embed_tokens.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("on_grid", [False, True], ids=["random", "qat"])
def test_quantized_graph_holds_torchaos_integers(group, on_grid):
    gen = torch.Generator().manual_seed(group)
    weight = torch.randn(N, K, generator=gen) * 0.05  # nn.Linear layout [out, in]
    table = torch.randn(ROWS, K, generator=gen)
    if on_grid:  # a QAT checkpoint: already on the grid, must be stored exactly as it is
        weight = grid_weight(*grid_integers(weight, "8da4w", group))
        table = grid_weight(*grid_integers(table, "emb4", group))
    model, applied = quantize_graph(_graph(weight.T.numpy().copy(), table.numpy()),
                                    parse_recipe(f"target=8da4w:{group}+emb4:{group}", "onnx"))
    assert {op for op, *_ in applied.values()} == {"linear", "embedding"}
    assert sorted(n.op_type for n in model.graph.node) == ["GatherBlockQuantized", "MatMulNBits"]

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # One-hot rows read the dequantized weight out of MatMulNBits exactly (every other product is 0).
    y, e = session.run(None, {"x": np.eye(K, dtype=np.float32), "ids": np.arange(ROWS)})
    expected_weight = grid_weight(*grid_integers(weight, "8da4w", group))
    expected_table = grid_weight(*grid_integers(table, "emb4", group))
    assert torch.equal(torch.from_numpy(y), expected_weight.T)
    assert torch.equal(torch.from_numpy(e), expected_table)
    if on_grid:
        assert torch.equal(torch.from_numpy(y), weight.T) and torch.equal(torch.from_numpy(e), table)
