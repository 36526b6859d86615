"""Quantize exported ONNX graphs with onnxruntime's quantization tools (the ONNX path).

    8da4w:G  MatMul -> MatMulNBits, 4-bit blocks of G, fp32 activations (see below)
    int4:G   MatMul -> MatMulNBits, 4-bit blocks of G, fp32 activations
    8da8w    MatMul -> MatMulNBits, 8-bit blocks of 32 with zero points, fp32 activations
    emb4:G   Gather -> GatherBlockQuantized, 4-bit blocks of G along the row

The 4-bit weights are torchao's: onnxruntime's quantizer builds the nodes, but its block rule
(round to nearest with its own scale) is replaced by quantize.modules.grid_integers, the rule the
.pte uses, so a recipe puts the same integers and scales in both formats. That matters most for a
quantization-aware trained checkpoint (quantize/qat.py), whose weights already lie on that grid:
they are stored exactly, where onnxruntime's rule re-rounded them (the shipped pair agreed with
its published weights on 93.4% of tokens through onnxruntime's own rule).
    emb8     Gather -> GatherBlockQuantized (bits=8), 8-bit blocks of 32 along the row: onnxruntime's
             quantizer writes only 4-bit gathers, so this one node is built here

Activations stay fp32 on this path, whatever the recipe's name says, because a speculative
decoder needs a verify pass of K + 1 tokens to reproduce one-token decoding exactly:
- quantize_dynamic (DynamicQuantizeLinear + MatMulInteger) takes one activation scale for the
  whole tensor, so a token's logits depend on the other tokens of the call: speculative and
  target-only outputs diverged on the tiny pair;
- MatMulNBits with accuracy_level 4 (int8 activations) gave different results for one row and for
  several rows: on the shipped pair at 8da4w+emb4, speculative output differed from target-only
  output on the same bundle.
The weights are what a phone reads per token, so the sizes are those of the recipe either way.

Which recipe applies to a node comes from the module it was exported from: torch's exporter
records the module path in each node's `pkg.torch.onnx.name_scopes`, and the graph modules hold
the models as `target` / `drafter`, so a node's (model, module path) picks the scheme and the
per-module overrides exactly as on the ExecuTorch path. The tied target LM head (a MatMul over a
Transpose of the embedding table) is first given its own transposed initializer so that it can
be quantized as a linear while the table is quantized as an embedding.
"""

from __future__ import annotations

import ast
import logging

import numpy as np

from .recipes import PairRecipe, Scheme

ROLE_OF_PREFIX = {"target.": "target", "drafter.": "drafter"}
EMB8_BLOCK = 32


def _torchao_grid_quantizer(config):
    """onnxruntime's DefaultWeightOnlyQuantizer with its 4-bit block rule replaced by torchao's integers.

    The two overridden methods return what onnxruntime's own do, in its layouts: MatMulNBits' B as
    [N, K / block, block / 2] bytes of unsigned nibbles (q + 8: symmetric nodes carry no zero points
    and MatMulNBits' default is 8) with scales [N, K / block]; GatherBlockQuantized's table as
    signed int4 pairs (the default zero point of int4 is 0) with scales [rows, cols / block]."""
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

    from .modules import grid_integers

    class TorchaoGrid(DefaultWeightOnlyQuantizer):
        def qbits_block_quant(self, fp32weight):  # MatMul B: [K, N], blocks along K
            q, scale = grid_integers(torch.from_numpy(np.array(fp32weight.T, dtype=np.float32)), "int4", self.config.block_size)
            nibbles = (q.numpy().astype(np.int16) + 8).astype(np.uint8).reshape(q.shape[0], -1, self.config.block_size)
            packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
            return packed, scale.numpy().astype(fp32weight.dtype), None

        def quantize_ndarray(self, data, quantize_axis, block_size, is_symmetric):  # Gather table: blocks along rows
            if quantize_axis != data.ndim - 1 or data.ndim != 2 or not is_symmetric:
                raise ValueError("the torchao grid is defined for 2-D tables quantized along their rows, symmetrically")
            q, scale = grid_integers(torch.from_numpy(np.array(data, dtype=np.float32)), "emb4", block_size)
            return self.pack_int8_to_int4(q.numpy()), scale.numpy().astype(data.dtype), None

    return TorchaoGrid(config)


def _quantize_gather_8bit(model, node_name: str, block: int) -> None:
    """Gather(W, ids) -> com.microsoft GatherBlockQuantized(bits=8) over uint8 rows (symmetric, zero point 128)."""
    from onnx import helper, numpy_helper

    node = next(n for n in model.graph.node if n.name == node_name)
    inits = {i.name: i for i in model.graph.initializer}
    weight = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    rows, dim = weight.shape
    if dim % block:
        return  # left in fp32 (recorded as such by the plan's caller)
    blocks = weight.reshape(rows, dim // block, block)
    scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / 127.0
    data = (np.clip(np.round(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8).reshape(rows, dim)
    base = node.input[0]
    model.graph.initializer.extend([
        numpy_helper.from_array(data, f"{base}_Q8"),
        numpy_helper.from_array(scale.astype(np.float32), f"{base}_scales"),
        numpy_helper.from_array(np.full(scale.shape, 128, dtype=np.uint8), f"{base}_zero_points"),
    ])
    quantized = helper.make_node(
        "GatherBlockQuantized", [f"{base}_Q8", node.input[1], f"{base}_scales", f"{base}_zero_points"], list(node.output),
        name=f"{node.name}_Q8", domain="com.microsoft", block_size=block, gather_axis=0, quantize_axis=1, bits=8,
    )
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(index, quantized)
    if not any(base in n.input for n in model.graph.node):
        model.graph.initializer.remove(inits[base])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _module_path(node) -> str | None:
    """The exporting module's path (e.g. 'target.layers.0.self_attn.q_proj') of a node, if recorded."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in ast.literal_eval(prop.value) if s]
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def _split_role(path: str | None) -> tuple[str | None, str]:
    for prefix, role in ROLE_OF_PREFIX.items():
        if path and path.startswith(prefix):
            return role, path[len(prefix):]
    return None, path or ""


def _untie_transposed_weights(model) -> None:
    """MatMul(x, Transpose(W)) with W an initializer -> MatMul(x, W^T) with W^T a new initializer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    dead = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[source.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{source.input[0]}.transposed"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        inits[name] = model.graph.initializer[-1]
        node.input[1] = name
        # Keep the MatMul's provenance: the head is "lm_head" of the model that owns the table.
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                role = source.input[0].split(".")[0]
                prop.value = repr(["", f"{role}.lm_head", "linear"])
        if consumers.get(source.output[0], 0) == 1:
            dead.append(source)
    for node in dead:
        model.graph.node.remove(node)


def plan(model, recipe: PairRecipe) -> dict:
    """Node name -> (kind, scheme, group) for every MatMul / Gather over a float initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            role, fqn = _split_role(_module_path(node))
            if role is None:
                continue
            linear, group = getattr(recipe, role).linear_for(fqn)
            in_features = inits[node.input[1]].dims[0]
            if linear in ("8da4w", "int4") and in_features % group:
                continue  # kept fp32, as on the torchao side
            if linear != "none":
                out[node.name] = ("linear", linear, group, f"{role}.{fqn}")
        elif node.op_type == "Gather" and node.input[0] in inits:
            init = inits[node.input[0]]
            if init.data_type != 1 or len(init.dims) != 2:  # float tables only (not token_ordering)
                continue
            role = init.name.split(".")[0]
            scheme: Scheme | None = getattr(recipe, role, None)
            if scheme is not None and scheme.embedding == "emb4" and init.dims[1] % scheme.embedding_group_size:
                continue
            if scheme is not None and scheme.embedding != "none":
                out[node.name] = ("embedding", scheme.embedding, scheme.embedding_group_size, init.name)
    return out


def quantize_graph(model, recipe: PairRecipe):
    """Quantize an ONNX ModelProto per `recipe`; returns (the quantized ModelProto, the plan applied)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    _untie_transposed_weights(model)
    applied = plan(model, recipe)
    groups: dict[tuple, list[str]] = {}
    for node, (kind, scheme, group, _) in applied.items():
        groups.setdefault((kind, scheme, group), []).append(node)
    for (kind, scheme, group), nodes in sorted(groups.items()):
        if scheme == "emb8":
            for node in nodes:
                _quantize_gather_8bit(model, node, block=EMB8_BLOCK)
            continue
        op_type = "Gather" if kind == "embedding" else "MatMul"
        # The quantizer takes every node of op_types_to_quantize (nodes_to_include only adds to
        # them), so every other node of that type is excluded by name.
        chosen = set(nodes)
        excluded = [n.name for n in model.graph.node if n.op_type == op_type and n.name not in chosen]
        four_bit = scheme != "8da8w"
        quantizer = MatMulNBitsQuantizer(
            model, bits=4 if four_bit else 8, block_size=group if four_bit else EMB8_BLOCK,
            is_symmetric=four_bit, accuracy_level=None,
            nodes_to_exclude=excluded, op_types_to_quantize=(op_type,), quant_axes=(("Gather", 1), ("MatMul", 0)),
        )
        if four_bit:
            quantizer.node_quantizer = _torchao_grid_quantizer(quantizer.algo_config)
        quantizer.process()
        model = quantizer.model.model
    return model, applied
