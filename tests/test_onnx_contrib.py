"""export/onnx_contrib.py registers onnxruntime's MatMulNBits and GatherBlockQuantized schemas with `onnx`
for onnxscript's tracer. These tests say when that is obsolete, and that the registration is harmless."""

from __future__ import annotations

import subprocess
import sys

from mtp_edge.export.onnx_contrib import SCHEMAS, contrib_translations


def test_onnx_still_lacks_onnxruntimes_contrib_schemas():
    """When this fails, `onnx` ships the schemas itself: drop the registration in contrib_translations."""
    code = "import onnx.defs; print([onnx.defs.has(n, 'com.microsoft') for n in %r])" % (list(SCHEMAS),)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str([False] * len(SCHEMAS))


def test_registered_schemas_type_the_outputs():
    import onnx
    from onnx import TensorProto, helper

    contrib_translations()
    matmul = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=64, N=48, bits=4, block_size=32)
    gather = helper.make_node("GatherBlockQuantized", ["t", "ids", "ts"], ["e"], domain="com.microsoft", bits=4, block_size=32)
    graph = helper.make_graph(
        [matmul, gather], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]), helper.make_tensor_value_info("b", TensorProto.UINT8, [48, 2, 16]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [48, 2]), helper.make_tensor_value_info("t", TensorProto.UINT8, [40, 32]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [3]), helper.make_tensor_value_info("ts", TensorProto.FLOAT, [40, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.output}
    assert shapes == {"y": ["n", 48], "e": [3, 64]}
    onnx.checker.check_model(inferred, full_check=True)
