import functools
import os
import sys
import warnings
from pathlib import Path

import pytest

# One torch thread per pytest-xdist worker (and per subprocess a test starts: they inherit it). Two
# workers on two cores with torch's default of one OpenMP thread per core run many times slower
# than with one thread each (measured on the 2-core dev machine, busy: test_heldout_quality_floors
# 307 s vs 24 s, test_greedy_speculative_equals_target_only 87 s vs 4 s). Set OMP_NUM_THREADS to override.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", message=".*register_constant.*")

import torch  # noqa: E402

from hf_pairs import make_hf_pair, save_pair  # noqa: E402
from mtp_edge.export.cache import exclusive  # noqa: E402
from shared_exports import run_dir, shared_bundle  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def hf_tiny():
    return make_hf_pair("tiny", seed=0)


@pytest.fixture(scope="session")
def hf_plain():
    return make_hf_pair("plain", seed=1)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """One folder for the whole run, seen by every pytest-xdist worker (tests/shared_exports.py)."""
    return run_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_dirs(request, shared_dir):
    """The tiny pair saved by transformers as a text-only, single-file checkpoint: once per run,
    every worker reads the same folders (so that the exports of it are shared too)."""
    root = shared_dir / "tiny"
    with exclusive(shared_dir / "tiny.lock"):
        if not (shared_dir / "tiny.saved").is_file():
            save_pair(request.getfixturevalue("hf_tiny"), root)
            (shared_dir / "tiny.saved").touch()
    return root / "target", root / "drafter"


@pytest.fixture(scope="module")
def backend_for(tiny_dirs):
    """backend_for(max_seq_len) -> an eager backend of the tiny pair with that context (one per length)."""
    from mtp_edge.models import load_pair
    from mtp_edge.runtime.backends.eager import EagerBackend

    @functools.lru_cache(maxsize=None)
    def make(max_seq_len: int) -> EagerBackend:
        return EagerBackend(*load_pair(*tiny_dirs, max_seq_len=max_seq_len))

    return make


@pytest.fixture(scope="session")
def shared_export(shared_dir):
    """shared_export(pair_dirs, settings) -> the bundle of that pair exported with that ExportSettings,
    once per run for every test file and worker that asks for the same (read-only: copy it to change it)."""
    return lambda pair_dirs, settings: shared_bundle(shared_dir, pair_dirs, settings)


@pytest.fixture(scope="session")
def demo_cache(shared_dir):
    """A cache folder for the run (MTP_EDGE_CACHE), shared by the xdist workers: the demo test starts
    from it empty, as a user's first run, and exports the shipped pair's demo bundle into it; the
    native runner tests reuse that bundle instead of exporting it again (about 7 minutes)."""
    cache = shared_dir / "mtp-edge-cache"
    cache.mkdir(exist_ok=True)
    return cache


# --------------------------------------------------------------------------- lanes and order
# `make test` runs everything on two pytest-xdist workers with --dist loadgroup: the tests that read
# one expensive export carry one xdist_group mark, so they run on one worker, which exports it once
# (tests/shared_exports.py) while the other worker runs something else. Groups and tests are started
# longest first (the order below, then the other `slow` tests, then the rest in file order), so that
# the two workers finish together; costs are single-core seconds measured on the 2-core dev machine.
RUN_FIRST = [
    "shipped-demo",          # `mtp-edge demo` from an empty cache (exports .pte + ONNX); native, tune, eval, quantized reuse it
    "tiny-xnnpack",          # tiny pair fp32 .pte (XNNPACK) + ONNX: test_export_pte, test_clustered_head
    "optimum-cli",           # the same export through optimum-cli and mtp-edge export
    "tiny-portable",         # tiny pair fp32 .pte (portable): test_export_pte, test_native_runner, test_android_bridge
    "tiny-arm64",            # the same bundle: the runner cross-built for aarch64, run under qemu (test_native_arm64)
    "shipped-eval-onnx",
    "e2b-slice-onnx",        # a 2-layer E2B-width slice to quantized ONNX in a fresh process (peak RSS)
    "optimum-exported",      # from_pretrained(export=True)
    "quantized-8da4w",       # tiny pair, quantized ONNX graphs
    "quantized-8da8w",
    "quantized-int4",
    "tiny-onnx",
]


def _rank(item) -> int:
    group = item.get_closest_marker("xdist_group")
    name = group.args[0] if group and group.args else None
    if name in RUN_FIRST:
        return RUN_FIRST.index(name)
    return len(RUN_FIRST) + (0 if item.get_closest_marker("slow") else 1)


def pytest_itemcollected(item):
    # A grouped test reads an expensive export: it is slow, and `-m "not slow"` leaves it out.
    if item.get_closest_marker("xdist_group") and not item.get_closest_marker("slow"):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: file order within a group, pytest's grouping by fixture parameter kept


def pytest_runtest_logreport(report):
    """With MTP_EDGE_TEST_TIMELINE=FILE, one line per test phase: worker, start, seconds, phase, test,
    so that where a run's time went (which worker waited on which export) can be read afterwards."""
    path = os.environ.get("MTP_EDGE_TEST_TIMELINE")
    if path and not hasattr(report, "node"):  # a worker's own report (xdist's controller gets copies with .node)
        import time

        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{time.time() - report.duration:.1f}\t"
                    f"{report.duration:.1f}\t{report.when}\t{report.nodeid}\n")
