import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", message=".*register_constant.*")

from hf_pairs import make_hf_pair, save_pair  # noqa: E402


@pytest.fixture(scope="session")
def hf_tiny():
    return make_hf_pair("tiny", seed=0)


@pytest.fixture(scope="session")
def hf_plain():
    return make_hf_pair("plain", seed=1)


@pytest.fixture(scope="session")
def tiny_dirs(hf_tiny, tmp_path_factory):
    """The tiny pair saved by transformers as a text-only, single-file checkpoint."""
    return save_pair(hf_tiny, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """A cache folder for the session (MTP_EDGE_CACHE): the demo test starts from it empty, as a
    user's first run, and exports the shipped pair's demo bundle into it; the native runner tests
    reuse that bundle instead of exporting it again (about 7 minutes)."""
    return tmp_path_factory.mktemp("mtp-edge-cache")
