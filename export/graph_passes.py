"""Graph passes run on the edge programs before partitioning (to_edge_transform_and_lower's
transform_passes): rewrites that let XNNPACK take nodes it would otherwise leave to portable
kernels, where every node left out splits a method's delegate in two."""

from __future__ import annotations

import torch
from torch.fx.passes.infra.pass_base import PassBase, PassResult


class InferTheSymbolicDimOfViews(PassBase):
    """A view whose shape has exactly one symbolic size gets -1 there instead.

    torch.export writes `x.reshape(-1, 1, H, 1)` of a tensor with a dynamic token count as a view
    whose first size is a SymInt expression. XNNPACK (executorch 1.5.1, ViewCopyConfig) takes views
    with at most one inferred (-1) size but no symbolic size, so each such view ran as a portable
    et_view between two delegates (112 in the shipped pair's dynamic-length verify). With the other
    sizes concrete, -1 names the same size: the element count fixes it.
    """

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        modified = False
        for node in graph_module.graph.nodes:
            # The edge dialect's view (EdgeOpOverload), by its public name.
            if node.op != "call_function" or getattr(node.target, "__name__", None) != "aten.view_copy.default":
                continue
            shape = list(node.args[1])
            symbolic = [i for i, size in enumerate(shape) if not isinstance(size, int)]
            if len(symbolic) == 1 and -1 not in shape:
                shape[symbolic[0]] = -1
                node.args = (node.args[0], shape, *node.args[2:])
                modified = True
        if modified:
            graph_module.graph.eliminate_dead_code()
            graph_module.recompile()
        return PassResult(graph_module, modified)
