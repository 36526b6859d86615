"""ONNX export of a target + drafter pair: two graphs that read one KV cache owned by the runtime.

    target.onnx   (tokens [1, T] i64, start_pos [1] i64, logits_at [N] i64, cache_k_{l}, cache_v_{l} ...)
                  -> (logits [N, V], hidden [N, H], new_k_{l}, new_v_{l} ... [1, kv_heads, T, head_dim])
                  T and N are dynamic: one graph serves prefill chunks (N = 1: the last prompt
                  position), verify (T = N = K + 1) and single-token decode.
    drafter.onnx  (token [1] i64, hidden [H], position [1] i64, validated_length [1] i64,
                   cache_k_{l}, cache_v_{l} of the store layers)
                  -> (candidate_ids [C] i64, candidate_logits [C], next_hidden [H], argmax_id [1] i64)
                  C = clusters kept x tokens per cluster: no tensor of the graph has the vocabulary's size.

ONNX graphs are functional: a graph cannot write into one of its inputs. So the cache is a set of
graph inputs that both sessions bind to the same OrtValues, the target graph returns only the
K/V rows of its T new tokens, and the runtime writes those T rows into the cache (at most K + 1
rows per cache tensor per round). Inside the graphs attention reads the cache through matmuls
(query heads grouped per KV head, cache and fresh keys scored separately: see
models.components.attend_grouped), so no node copies a cache tensor either.

The drafter graph carries its own copy of the target's token embedding (it embeds the token it
drafts from); for the shipped pair that is 1 MB.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from mtp_edge.models import Gemma4Drafter, Gemma4Target

from .pte import CACHE_FQN_PREFIX, ExportError, _Progress, _dtype_name, _TargetView

OPSET = 18
TARGET_FILE = "target.onnx"
DRAFTER_FILE = "drafter.onnx"
# Past this many bytes of weights a graph keeps them in a .data file beside it: saved inline, a graph
# is serialized whole in memory (its weights held twice more while it is written; 2.9 GiB peak for a
# 2-layer E2B-width slice whose quantized weights are 0.7 GiB), and protobuf cannot serialize 2 GiB.
EXTERNAL_DATA_THRESHOLD = 256 << 20


def cache_input(kind: str, layer: int) -> str:
    return f"cache_{kind}_{layer}"


def new_rows_output(kind: str, layer: int) -> str:
    return f"new_{kind}_{layer}"


class TargetGraph(nn.Module):
    """The target over an ExternalCache: reads the cache inputs, returns the T new K/V rows per cache layer."""

    def __init__(self, target: Gemma4Target):
        super().__init__()
        self.target = target.with_cache("external")  # no cache buffers: the cache is graph inputs
        self.cache_layers = tuple(target.cfg.cache_layers)

    def forward(self, tokens, start_pos, logits_at, cache_flat: list[torch.Tensor]):
        past = {layer: (cache_flat[2 * i], cache_flat[2 * i + 1]) for i, layer in enumerate(self.cache_layers)}
        hidden, kv = self.target.run(tokens, start_pos, past)
        hidden = hidden.index_select(1, logits_at)
        logits = self.target.logits(hidden)
        return (logits[0], hidden[0], *(t for layer in self.cache_layers for t in kv[layer].new))


class DrafterGraph(nn.Module):
    def __init__(self, target: Gemma4Target, drafter: Gemma4Drafter):
        super().__init__()
        self.target = _TargetView(target.with_cache("external"))  # no cache buffers: the cache is graph inputs
        self.drafter = drafter
        self.store_layers = dict(target.cfg.store_layers)
        self.read_layers = tuple(sorted(set(self.store_layers.values())))

    def forward(self, token, hidden, position, validated_length, cache_flat: list[torch.Tensor]):
        cache = {layer: (cache_flat[2 * i], cache_flat[2 * i + 1]) for i, layer in enumerate(self.read_layers)}
        kv = {layer_type: cache[layer] for layer_type, layer in self.store_layers.items()}
        embedding = Gemma4Target.embed(self.target, token.view(1, 1))
        return self.drafter.draft_step(embedding, hidden.view(1, 1, -1), position, validated_length, kv)


def _cache_inputs(target: Gemma4Target, layers) -> tuple[list[str], list[torch.Tensor], dict[str, str]]:
    """Input names, example tensors and input -> cache buffer name for the cache of `layers`."""
    names, examples, alias = [], [], {}
    for layer in layers:
        for kind, buf in zip("kv", target.cache.layer(layer)):
            name = cache_input(kind, layer)
            names.append(name)
            # A fresh tensor per input: the exported graph must not assume two inputs alias.
            examples.append(torch.zeros(buf.shape, dtype=buf.dtype))
            alias[name] = f"{CACHE_FQN_PREFIX}{kind}_{layer}"
    return names, examples, alias


def _value_info(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}


def graph_signature(path: str | Path) -> dict:
    """Inputs and outputs (name, shape with dynamic dims by name, dtype) of a saved ONNX graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def check_graph(path: str | Path) -> None:
    """onnx.checker's full check (shape inference included), reading external data next to the graph."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None


def _graph_bytes(module: nn.Module) -> int:
    """Bytes of the weights a graph exported from `module` holds (parameters and buffers, shared ones once)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _quantized_nodes(model, module: nn.Module) -> dict:
    """{node name: {kind, scheme, group, weight}} for the block-quantized nodes of an exported onnx_ir model."""
    from mtp_edge.quantize.nbits import _BlockQuantized

    owners = {f"{fqn}.data": (fqn, m) for fqn, m in module.named_modules() if isinstance(m, _BlockQuantized)}
    out = {}
    for node in model.graph:
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        value = node.inputs[1 if node.op_type == "MatMulNBits" else 0]
        while value.name not in owners and value.producer() is not None:  # a linear's rows, reshaped
            value = value.producer().inputs[0]
        fqn, m = owners[value.name]
        out[node.name] = {"kind": "linear" if node.op_type == "MatMulNBits" else "embedding", "scheme": m.scheme,
                          "group": m.block, "weight": fqn}
    return out


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes, external: bool) -> dict:
    """torch.onnx.export one graph to `path`; quantize.nbits modules become onnxruntime's block-quantized
    nodes, their packed data the initializers. Returns the block-quantized nodes (see _quantized_nodes)."""
    from .onnx_contrib import contrib_translations

    program = torch.onnx.export(
        module.eval(), args, dynamo=True, opset_version=OPSET, input_names=input_names, output_names=output_names,
        dynamic_shapes=dynamic_shapes, optimize=True, verbose=False, external_data=external,
        custom_translation_table=contrib_translations(),
    )
    quantized = _quantized_nodes(program.model, module)
    program.save(path, external_data=external)
    return quantized


def export_onnx(
    target: Gemma4Target,
    drafter: Gemma4Drafter,
    out_dir: str | Path,
    *,
    max_seq_len: int,
    external_data: bool | None = None,
    progress: bool = True,
) -> dict:
    """Write target.onnx and drafter.onnx (and their .data files when over 2 GB) into out_dir.

    The graphs hold what the modules hold: fp32 weights, or, for modules quantized on the way in
    (quantize.streaming.load_quantized_pair(form="onnx")), onnxruntime's MatMulNBits and
    GatherBlockQuantized nodes over their packed integers: no fp32 copy of a quantized weight is
    ever made, so a full-size pair exports in about its quantized size.

    external_data: None keeps a graph's weights inside it unless they approach protobuf's 2 GB
    limit; True / False force the choice for both graphs.

    out_dir is written into directly: write_bundle hands over a private temporary folder.
    Returns the graph contract for the manifest: files, signatures, which inputs are the cache.
    """
    out_dir = Path(out_dir)
    cfg = target.cfg
    if max_seq_len > target.max_seq_len:
        raise ExportError(f"max_seq_len {max_seq_len} exceeds the target's cache of {target.max_seq_len} positions.")
    def needs_external(module: nn.Module) -> bool:
        return external_data if external_data is not None else _graph_bytes(module) >= EXTERNAL_DATA_THRESHOLD

    started = time.perf_counter()
    step = _Progress(progress, total=4)
    i64 = dict(dtype=torch.long)

    target_cache, target_examples, target_alias = _cache_inputs(target, cfg.cache_layers)
    target_inputs = ["tokens", "start_pos", "logits_at", *target_cache]
    new_rows = [new_rows_output(kind, layer) for layer in cfg.cache_layers for kind in "kv"]
    target_outputs = ["logits", "hidden", *new_rows]
    tokens_dim, logits_dim = torch.export.Dim("tokens", min=1, max=max_seq_len), torch.export.Dim("logits", min=1, max=max_seq_len)
    # Example T = 3 and N = 2: sizes 0 and 1 would be specialised away by torch.export.
    target_args = (torch.zeros(1, 3, **i64), torch.zeros(1, **i64), torch.tensor([1, 2]), target_examples)
    target_dynamic = ({1: tokens_dim}, None, {0: logits_dim}, [None] * len(target_examples))

    drafter_module = DrafterGraph(target, drafter)
    drafter_cache, drafter_examples, drafter_alias = _cache_inputs(target, drafter_module.read_layers)
    drafter_inputs = ["token", "hidden", "position", "validated_length", *drafter_cache]
    drafter_outputs = ["candidate_ids", "candidate_logits", "next_hidden", "argmax_id"]
    hidden = torch.zeros(cfg.hidden_size, dtype=target.embed_tokens.weight.dtype)
    drafter_args = (torch.zeros(1, **i64), hidden, torch.zeros(1, **i64), torch.ones(1, **i64), drafter_examples)

    target_module = TargetGraph(target)
    with torch.no_grad():
        quantized = {}
        quantized["target"] = _export_graph(target_module, target_args, out_dir / TARGET_FILE, target_inputs,
                                            target_outputs, target_dynamic, needs_external(target_module))
        step(f"torch.onnx.export {TARGET_FILE}" + (f" ({len(quantized['target'])} quantized nodes)" if quantized["target"] else ""))
        quantized["drafter"] = _export_graph(drafter_module, drafter_args, out_dir / DRAFTER_FILE, drafter_inputs,
                                             drafter_outputs, None, needs_external(drafter_module))
        step(f"torch.onnx.export {DRAFTER_FILE}" + (f" ({len(quantized['drafter'])} quantized nodes)" if quantized["drafter"] else ""))
    for name in (TARGET_FILE, DRAFTER_FILE):
        check_graph(out_dir / name)
    step("onnx.checker (full)")

    graphs = {
        "target": {"file": TARGET_FILE, **graph_signature(out_dir / TARGET_FILE),
                   "cache_inputs": target_alias,
                   "new_rows_outputs": {new_rows_output(kind, layer): target_alias[cache_input(kind, layer)]
                                        for layer in cfg.cache_layers for kind in "kv"}},
        "drafter": {"file": DRAFTER_FILE, **graph_signature(out_dir / DRAFTER_FILE), "cache_inputs": drafter_alias},
    }
    data_files = sorted(p.name for p in out_dir.iterdir() if p.name.endswith(".data"))
    step(f"wrote {', '.join([TARGET_FILE, DRAFTER_FILE, *data_files])}")
    return {
        "graphs": graphs,
        "quantized_nodes": quantized,
        "data_files": data_files,
        "bytes": {p.name: p.stat().st_size for p in out_dir.iterdir() if p.suffix in (".onnx", ".data")},
        "export_s": time.perf_counter() - started,
        "dtype": _dtype_name(target.embed_tokens.weight.dtype),
    }
