"""Shapes of every activation of an exported drafter step, read from the artifacts themselves.

Weights (constants, initializers) are left out: the embedding tables and the LM head are
vocabulary-sized by nature. What must never be vocabulary-sized is what a step computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch


def aten_shapes(exported_program) -> list[tuple[str, tuple[int, ...]]]:
    """(node, shape) of every tensor each call_function node of a torch.export program produces."""
    out = []
    for node in exported_program.graph.nodes:
        if node.op != "call_function":
            continue
        for value in torch.utils._pytree.tree_leaves(node.meta.get("val")):
            if isinstance(value, torch.Tensor):
                out.append((node.name, tuple(value.shape)))
    return out


def pte_shapes(pte_path: Path, method: str) -> list[tuple[str, tuple[int, ...]]]:
    """(value index, shape) of every non-constant tensor of a .pte method: inputs, outputs, planned
    activations, the delegates' inputs and outputs, and the mutable buffers."""
    from mtp_edge.export.executorch_compat import read_program

    program = read_program(Path(pte_path).read_bytes())
    plan = next(p for p in program.execution_plan if p.name == method)
    return [(f"value {i}", tuple(v.val.sizes)) for i, v in enumerate(plan.values)
            if hasattr(v.val, "sizes") and not v.val.data_buffer_idx]


def onnx_shapes(bundle: Path, role: str) -> list[tuple[str, tuple[int, ...]]]:
    """(tensor, shape) of every node output of a bundle's graph, from a real onnxruntime run in which
    each of them is made a graph output (shape inference only types them)."""
    graph_info = json.loads((bundle / "manifest.json").read_text())["onnx"][role]
    model = onnx.load(str(bundle / graph_info["file"]))
    typed = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v for v in [*typed.value_info, *typed.output]}
    initializers = {i.name for i in model.graph.initializer}
    exposed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in initializers and name not in exposed:
                model.graph.output.append(known[name])
                exposed.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in graph_info["inputs"]:
        shape = [3 if isinstance(d, str) else d for d in i["shape"]]  # dynamic dims: 3 tokens
        feeds[i["name"]] = np.ones(shape, dtype=i["dtype"])
    outputs = session.run(None, feeds)
    return [(o.name, tuple(a.shape)) for o, a in zip(session.get_outputs(), outputs)]


def vocabulary_sized(shapes: list[tuple[str, tuple[int, ...]]], vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, shape) for name, shape in shapes if vocab_size in shape]
