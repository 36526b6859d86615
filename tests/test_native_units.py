"""The C++ unit tests of android_demo/native (tests/unit_tests.cpp), run by CTest in the runner's build folder.

They cover what needs no model: sha256 against the NIST vectors, the JSON reader on valid and
malformed input, the sampling arithmetic and the draft policy against values from the Python runtime,
and the manifest reader's first checks. The `mtp_edge_unit_tests` target is built with the runner
(runtime/native/build.py, cached by source hash), so this adds no configure or build of its own when
test_native_runner.py has built it; it runs on that file's pytest-xdist worker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mtp_edge.runtime.native import build

pytestmark = [pytest.mark.native, pytest.mark.xdist_group("tiny-portable")]

# The groups of tests/unit_tests.cpp, each one CTest test (android_demo/native/CMakeLists.txt).
UNIT_GROUPS = ["sha256", "json", "sampling", "draft_policy", "manifest", "utf8"]


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return build.build_runner(progress=False).parent


def test_cpp_unit_tests_pass_under_ctest(build_dir):
    unit = build_dir / "mtp_edge_unit_tests"
    assert unit.is_file(), f"{unit} was not built (MTP_EDGE_BUILD_TESTS is on for desktop builds)"
    listed = subprocess.run([str(unit), "--list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.split() == UNIT_GROUPS  # so every group is registered with CTest
    ctest = Path(build.cmake_executable()[0]).with_name("ctest")  # ships with the cmake the build used
    done = subprocess.run([str(ctest), "--test-dir", str(build_dir), "--output-on-failure", "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # "100% tests passed, 0 tests failed out of 5" (CTest 3) or "100% tests passed out of 5" (CTest 4)
    summary = re.search(r"100% tests passed(?:, 0 tests failed)? out of (\d+)", done.stdout)
    assert summary and int(summary.group(1)) == len(UNIT_GROUPS), done.stdout
    passed = re.findall(r"Test +#\d+: unit\.(\w+) \.+ +Passed", done.stdout)
    assert sorted(passed) == sorted(UNIT_GROUPS), done.stdout
    # Every group ran checks (the binary also fails a group that ran none).
    whole = subprocess.run([str(unit)], capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    counts = dict(re.findall(r"^\[(\w+)\] (\d+) checks, 0 failed$", whole.stdout, re.MULTILINE))
    assert sorted(counts) == sorted(UNIT_GROUPS) and all(int(n) >= 5 for n in counts.values()), whole.stdout


def test_unit_test_binary_rejects_an_unknown_group(build_dir):
    done = subprocess.run([str(build_dir / "mtp_edge_unit_tests"), "nonesuch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown test group 'nonesuch'" in done.stderr


def test_unit_tests_key_the_build(tmp_path):
    """Editing tests/unit_tests.cpp gives a new build key, so a cached build never runs stale tests."""
    copy = tmp_path / "native"
    shutil.copytree(build.source_dir(), copy)
    before = build.source_hash(copy)
    unit = copy / "tests" / "unit_tests.cpp"
    unit.write_text(unit.read_text() + "\n// changed\n")
    assert build.source_hash(copy) != before
