"""`mtp-edge bench methods BUNDLE --profile`: where each call of the speculative loop spends its time
inside the .pte, operator by operator.

ExecuTorch records every kernel call and delegate call of a program loaded with ETDump on (the
pip wheel's runtime has it), and its devtools Inspector reads the record back. Each call of
`methods.method_calls` (prefill chunk, verify of K + 1 tokens, decode, draft step, one-call drafts)
runs `repeats` times in a program of its own, so that the record holds that call alone (the cache
fill before it runs the same verify method: its runs come first and are left out).

Per call: the time in XNNPACK delegates and outside them (kernels of the portable or optimized
libraries: what the issue on cheap rounds wants gone from the hot path), the operators outside, and
the XNNPACK operators inside. Times are medians per event and include the recording's own
overhead: compare calls and operators within one profile, and take latencies from `bench methods`.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from .methods import method_calls


def profile_pte(bundle_dir, *, repeats: int = 20, warmup: int = 2, fill_chunks: int = 4, seed: int = 0,
                top: int = 10) -> dict:
    """Call name -> its operator profile (see the module doc)."""
    from executorch.devtools import Inspector

    from mtp_edge.runtime.backends.pte import PteBackend

    report, pending = {}, None
    with tempfile.TemporaryDirectory() as tmp, tqdm(desc="profile", leave=False) as bar:
        while pending is None or pending:
            backend = PteBackend(bundle_dir, verify_hashes=False, etdump=True)
            calls, _ = method_calls(backend, k=backend.k, prefill_chunk=backend.prefill_chunk,
                                    max_seq_len=backend.max_seq_len, fill_chunks=fill_chunks, seed=seed)
            if pending is None:
                pending = list(calls)
                bar.total = len(pending)
            name = pending.pop(0)
            for _ in range(warmup + repeats):
                calls[name]()
            path = Path(tmp) / f"{name}.etdp"
            backend.write_etdump(path)
            blocks = [b for b in Inspector(etdump_path=str(path)).event_blocks if b.name == "Execute"]
            # The last method run is the profiled one (draft after the fill's verify; verify after its own fill).
            report[name] = summarize(blocks[-1].events, repeats, top)
            bar.update()
    return report


def summarize(events, repeats: int, top: int = 10) -> dict:
    """One call's profile from its Inspector events: each event's median over the last `repeats` runs."""
    delegate_ms = outside_ms = 0.0
    delegate_calls = operator_calls = 0
    outside, inside = defaultdict(lambda: [0, 0.0]), defaultdict(lambda: [0, 0.0])
    kernel = None  # the kernel named by the last `native_call_<op>` event: its OPERATOR_CALL comes next
    for event in events:
        if event.perf_data is None:
            continue
        ms = statistics.median(event.perf_data.raw[-repeats:])
        if event.name == "DELEGATE_CALL":
            delegate_ms, delegate_calls = delegate_ms + ms, delegate_calls + 1
        elif event.name == "OPERATOR_CALL":
            outside_ms, operator_calls = outside_ms + ms, operator_calls + 1
            # Kernels without a native_call event (ExecuTorch's prim ops: views, sizes, scalar math).
            entry = outside[kernel or "(prim op)"]
            entry[0], entry[1] = entry[0] + 1, entry[1] + ms
            kernel = None
        elif event.name.startswith("native_call_"):
            kernel = event.name.removeprefix("native_call_")
        elif event.is_delegated_op:
            entry = inside[re.sub(r" #\d+$", "", event.name)]
            entry[0], entry[1] = entry[0] + 1, entry[1] + ms
    total = delegate_ms + outside_ms

    def ranked(table):
        rows = sorted(table.items(), key=lambda item: -item[1][1])[:top]
        return [{"op": op, "calls": calls, "ms": round(ms, 4)} for op, (calls, ms) in rows]

    return {
        "total_ms": total,
        "xnnpack_ms": delegate_ms,
        "outside_xnnpack_ms": outside_ms,
        "outside_xnnpack_share": outside_ms / total if total else 0.0,
        "delegate_calls": delegate_calls,
        "operator_calls": operator_calls,
        "outside_xnnpack_ops": ranked(outside),
        "xnnpack_ops": ranked(inside),
    }
