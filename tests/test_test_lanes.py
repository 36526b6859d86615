"""The test lanes themselves: `make test` relies on pytest-xdist's loadgroup keeping the tests of one
shared export on one worker (tests/conftest.py); a worker that got half a group would wait on the
other's export lock instead of working (pytest 9.2.0 broke this for xdist 3.8.0: the group suffix
xdist writes to `item._nodeid` no longer reached the node id, and every group was split)."""

from __future__ import annotations

import re
import subprocess
import sys

GROUPED = '''
import pytest

@pytest.fixture(scope="module", params=[pytest.param("x", marks=pytest.mark.xdist_group("by-param"))])
def bundle(request):
    return request.param

@pytest.mark.xdist_group("by-test")
@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    pass

@pytest.mark.parametrize("i", range(4))
def test_grouped_by_fixture_param(bundle, i):
    pass

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    pass
'''


def test_loadgroup_keeps_each_group_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]
    workers: dict[str, set[str]] = {}
    for worker, test in re.findall(r"\[(gw\d)\].*PASSED (\S+)", done.stdout):
        workers.setdefault(test.split("[")[0].split("::")[-1], set()).add(worker)
    assert set(workers) == {"test_grouped", "test_grouped_by_fixture_param", "test_free"}, done.stdout[-2000:]
    assert len(workers["test_grouped"]) == 1 and len(workers["test_grouped_by_fixture_param"]) == 1, workers
