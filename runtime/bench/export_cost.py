"""`mtp-edge bench export-measured TARGET DRAFTER OUT`: what an export costs, measured in a fresh process.

write_bundle runs in a spawned child (timing.run_in_child): wall time from process start to exit
(imports included), the child's peak RSS, and the RSS of each export stage (its progress lines).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .timing import RssWatch, peak_rss_bytes, run_in_child


def export_child(target_dir, drafter_dir, out_dir, settings) -> dict:
    """The child side of measure_export: write_bundle with an RSS watch on its progress lines."""
    from mtp_edge.export.bundle import write_bundle

    try:  # a benchmark export that outgrows the machine should be the first thing the OOM killer ends
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    watch = RssWatch(sys.stderr)
    sys.stderr = watch
    try:
        started = time.perf_counter()
        manifest = write_bundle(target_dir, drafter_dir, out_dir, settings, progress=True)
        wall = time.perf_counter() - started
    finally:
        sys.stderr = watch.stream
        watch.stop()
    return {"wall_s_in_process": wall, "peak_rss_bytes_self": peak_rss_bytes(), "stages": watch.stages,
            "sizes": manifest.to_json()["sizes"]}


def measure_export(target_dir, drafter_dir, out_dir, settings) -> dict:
    """Export a bundle (export.settings.ExportSettings) in a fresh process: wall time (process start
    to exit, imports included), peak RSS of that process, per-stage RSS, and the bundle's sizes."""
    child = run_in_child(export_child, str(target_dir), str(drafter_dir), str(out_dir), settings)
    r = child["result"]
    return {
        "export_wall_s": child["wall_s"],
        "export_wall_s_in_process": r["wall_s_in_process"],
        "export_peak_rss_bytes": child["peak_rss_bytes"],
        "export_peak_rss_gib": child["peak_rss_bytes"] / 2**30,
        # The child's own high-water mark: ru_maxrss above also counts this process's at the spawn.
        "export_own_peak_rss_bytes": child["own_peak_rss_bytes"],
        "stages": r["stages"],
        "sizes": r["sizes"],
        "pte_bytes": r["sizes"].get("pte_bytes", 0),
        "pte_gib": r["sizes"].get("pte_bytes", 0) / 2**30,
        "onnx_bytes": sum(r["sizes"].get("onnx_bytes", {}).values()),
        "weight_bytes": r["sizes"].get("weight_bytes"),
    }
