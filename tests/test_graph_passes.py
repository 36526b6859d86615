"""export/graph_passes.py: each pass lets XNNPACK take what it left out, and the program computes the same."""

from __future__ import annotations

import torch
from torch import nn

from mtp_edge.export.executorch_compat import xnnpack_partitioner
from mtp_edge.export.graph_passes import InferTheSymbolicDimOfViews


class _NormOverTokens(nn.Module):
    """An RMS-norm-like pass over a dynamic token count: reshapes whose first size is symbolic."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        h = self.proj(x)
        mean = (h * h).reshape(-1, 1, 16, 1).mean(dim=(2, 3), keepdim=True).reshape(x.shape[0], x.shape[1], 1)
        return self.proj(h * torch.rsqrt(mean + 1e-6))


def _lower(passes):
    from executorch.exir import to_edge_transform_and_lower

    x = torch.randn(1, 3, 16)
    dims = ({1: torch.export.Dim.DYNAMIC(min=1, max=5)},)
    with torch.no_grad():
        program = torch.export.export(_NormOverTokens().eval(), (x,), dynamic_shapes=dims, strict=False)
    return to_edge_transform_and_lower(program, transform_passes=passes, partitioner=[xnnpack_partitioner()])


def _outside(edge) -> list[str]:
    graph = edge.exported_program().graph
    return [getattr(n.target, "__name__", str(n.target)) for n in graph.nodes
            if n.op == "call_function" and "delegate" not in str(n.target) and "getitem" not in str(n.target)]


def test_symbolic_views_are_delegated_and_compute_the_same():
    from executorch.runtime import Runtime

    before, after = _lower(None), _lower([InferTheSymbolicDimOfViews()])
    assert "aten.view_copy.default" in _outside(before)  # what the pass is for (executorch 1.5.1)
    assert "aten.view_copy.default" not in _outside(after)
    module = _NormOverTokens().eval()
    method = Runtime.get().load_program(after.to_executorch().buffer).load_method("forward")
    for tokens in (1, 2, 5):
        x = torch.randn(1, tokens, 16)
        with torch.no_grad():
            expected = module(x)
        assert torch.allclose(method.execute([x])[0], expected, atol=1e-5), tokens


def test_delegable_ops_trace_the_same_model_and_put_it_back(tiny_dirs):
    """The stand-ins export/pte.py traces with (written-out tanh-GELU, RoPE's half swap as a matmul)
    compute what the eager model computes, and the model is the eager one again afterwards."""
    from mtp_edge.export.pte import delegable_ops
    from mtp_edge.models import load_pair
    from mtp_edge.models.components import rotate_half

    target, drafter = load_pair(*tiny_dirs, max_seq_len=32)
    tokens = torch.randint(0, target.cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = target.with_cache("none")(tokens, 0)
        with delegable_ops(target, drafter):
            swapped = [m for m in target.modules() if hasattr(m, "rotate")]
            assert swapped and all(m.rotate is not rotate_half for m in swapped)
            traced, _ = target.with_cache("none")(tokens, 0)
        assert all(m.rotate is rotate_half for m in swapped)
        again, _ = target.with_cache("none")(tokens, 0)
    assert torch.allclose(traced, expected, atol=1e-5, rtol=1e-5) and torch.equal(again, expected)
