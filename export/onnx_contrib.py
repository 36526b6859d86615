"""onnxruntime's block-quantized contrib operators for torch.onnx.export: the one workaround of the ONNX path.

quantize.nbits' custom ops become com.microsoft MatMulNBits and GatherBlockQuantized nodes through
torch.onnx.export's custom_translation_table. The exporter builds each node through onnxscript,
which needs the operator's schema from the `onnx` package's registry, and `onnx` has none for
onnxruntime's contrib operators (onnxscript.values.Op with a schema of our own is not consulted by
the exporter: checked with torch 2.13 / onnxscript 0.6). So `contrib_translations()` registers the
two schemas, inputs and attributes as onnxruntime documents them (docs/ContribOperators.md), when
the registry lacks them. tests/test_onnx_contrib.py tells when `onnx` ships them itself.

Each schema carries a type and shape inference function: without one the exporter's optimizer
leaves the nodes' outputs untyped (onnx.checker refuses the graph) and keeps the casts after them.
"""

from __future__ import annotations

import functools

DOMAIN = "com.microsoft"
_NUMERIC = ["tensor(float)", "tensor(float16)", "tensor(uint8)", "tensor(int32)", "tensor(int64)", "tensor(int4)", "tensor(uint4)"]


def _infer(ctx, dims) -> None:
    """Output 0: the scales' element type (input 2), shape `dims(input shapes, attribute)` where known."""
    from onnx import TypeProto

    out = TypeProto()
    out.tensor_type.elem_type = ctx.get_input_type(2).tensor_type.elem_type
    shapes = []
    for i in (0, 1):
        t = ctx.get_input_type(i)
        shapes.append(list(t.tensor_type.shape.dim) if t is not None and t.tensor_type.HasField("shape") else None)
    if None not in shapes:
        for dim in dims(*shapes, lambda name: ctx.get_attribute(name).i):
            d = out.tensor_type.shape.dim.add()
            d.CopyFrom(dim) if not isinstance(dim, int) else setattr(d, "dim_value", dim)
    ctx.set_output_type(0, out)


def _matmul_dims(a, b, attr):  # A [..., K] x B [N, blocks, bytes] -> [..., N]
    return [*a[:-1], attr("N")]


def _gather_dims(data, ids, attr):  # data [rows, packed columns], ids [...] -> [..., columns]
    return [*ids, data[1].dim_value * 8 // attr("bits")]


def _schema(name: str, inputs: list[tuple[str, bool]], attributes: list[tuple[str, bool]], dims):
    """An OpSchema with one output; inputs and attributes as (name, required)."""
    from onnx.defs import OpSchema

    single, optional = OpSchema.FormalParameterOption.Single, OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        name, DOMAIN, 1,
        inputs=[OpSchema.FormalParameter(n, f"T_{n}", param_option=single if req else optional) for n, req in inputs],
        outputs=[OpSchema.FormalParameter("Y", "T_Y")],
        type_constraints=[(f"T_{n}", _NUMERIC, "") for n, _ in inputs] + [("T_Y", _NUMERIC, "")],
        attributes=[OpSchema.Attribute(n, OpSchema.AttrType.INT, "", required=req) for n, req in attributes],
    )
    return schema.set_type_and_shape_inference_function(lambda ctx: _infer(ctx, dims))


SCHEMAS = {
    "MatMulNBits": ([("A", True), ("B", True), ("scales", True), ("zero_points", False), ("g_idx", False), ("bias", False)],
                    [("K", True), ("N", True), ("bits", False), ("block_size", True), ("accuracy_level", False)], _matmul_dims),
    "GatherBlockQuantized": ([("data", True), ("indices", True), ("scales", True), ("zero_points", False)],
                             [("gather_axis", False), ("quantize_axis", False), ("block_size", False), ("bits", False)], _gather_dims),
}


def missing_schemas() -> list[str]:
    import onnx.defs

    return [name for name in SCHEMAS if not onnx.defs.has(name, DOMAIN)]


@functools.cache
def contrib_translations() -> dict:
    """custom_translation_table entries for quantize.nbits' ops (registers the schemas on first use)."""
    import onnx.defs
    import onnxscript
    import torch

    import mtp_edge.quantize.nbits  # noqa: F401  (defines the torch ops)

    for name in missing_schemas():
        onnx.defs.register_schema(_schema(name, *SCHEMAS[name]))
    msft = onnxscript.values.Opset(DOMAIN, 1)

    def matmul_nbits(x, data, scales, bits: int, block: int):
        rows, blocks = data.shape[0], data.shape[1]
        return msft.MatMulNBits(x, data, scales, K=blocks * block, N=rows, bits=bits, block_size=block)

    def gather_block_quantized(data, ids, scales, bits: int, block: int):
        return msft.GatherBlockQuantized(data, ids, scales, bits=bits, block_size=block, gather_axis=0, quantize_axis=1)

    return {torch.ops.mtp_edge.matmul_nbits.default: matmul_nbits,
            torch.ops.mtp_edge.gather_block_quantized.default: gather_block_quantized}

