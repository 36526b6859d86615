"""The child side of `mtp-edge eval`'s per-component RSS (evaluate.component_rss runs it in a fresh process).

Apart from evaluate.py because of what it imports: nothing heavy at the top, so that the ONNX
baseline is onnxruntime's own, without torch (the child imports this module before it runs).
"""

from __future__ import annotations

import os
import resource


def _rss() -> int:  # resident now (the high-water mark is mostly set by the imports, not by a small component)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _own_peak() -> int | None:
    """VmHWM: this process's own high-water mark (ru_maxrss also counts the parent's at the spawn)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def component_rss_child(bundle: str, fmt: str, role: str) -> dict:
    """Load one component of a bundle (pte: the program; onnx: the target or drafter graph), run it
    once, and report this process's RSS before loading it, after, and at its peak."""
    devnull = os.open(os.devnull, os.O_WRONLY)  # the runtimes' own log lines: the parent prints the report
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if fmt == "pte":
        import torch
        import executorch.kernels.quantized  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401

        base = _rss()
        from mtp_edge.runtime.backends.pte import PteBackend

        b = PteBackend(bundle, verify_hashes=False)
        b.prefill(torch.tensor([1, 2, 3]))
        b.draft(4, torch.zeros(b.hidden_size), 2, 3)
    else:
        import numpy as np
        import onnxruntime as ort  # no torch here: the baseline is onnxruntime's own

        from mtp_edge.export.manifest import read_manifest  # no torch either

        base = _rss()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        graph = read_manifest(bundle, verify_hashes=False).onnx[role]
        s = ort.InferenceSession(f"{bundle}/{graph.file}", options, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in graph.inputs:
            shape = [1 if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = np.zeros(shape, dtype=i.dtype) if i.dtype != "int64" else np.ones(shape, dtype=np.int64)
        if "start_pos" in feeds:
            feeds["start_pos"][:] = 0
            feeds["logits_at"][:] = 0
        s.run(None, feeds)
    return {"baseline_rss_bytes": base, "rss_bytes": _rss(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "own_peak_rss_bytes": _own_peak()}
