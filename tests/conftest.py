import fcntl
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HYDRA_FULL_ERROR", "0")

# plugins named by BERTSMITH_PLUGINS or installed entry points take part in the per-entry
# tests (tests/test_entries.py finds every registered block)
from bertsmith.registry.plugins import load_plugins  # noqa: E402

load_plugins()
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- one cache for the whole session ----------------------------------------------------------
#
# BERTSMITH_CACHE holds the standard library's docstrings (the default corpus: a few seconds to
# scan) and the tokenizers trained on it (by corpus and settings, under a file lock). Every test,
# in-process or in a subprocess (which inherits the environment), shares one: a fresh folder per
# session, so a run from a clean clone costs what it costs on CI and never reads ~/.cache. Under
# pytest-xdist the workers share it too (the parent of each worker's basetemp is the session's).
# A BERTSMITH_CACHE set by the caller is used as it is. Tests that check what a cache holds, or
# that nothing is written to one, still point BERTSMITH_CACHE at their own folder (monkeypatch).


def _session_cache_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-USER/pytest-N, shared by gw0, gw1, ...
    return base / "bertsmith-cache"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Set BERTSMITH_CACHE for the session and warm it once: the default corpus is scanned
    before any test or subprocess needs it."""
    given = os.environ.get("BERTSMITH_CACHE")
    path = Path(given) if given else _session_cache_dir(tmp_path_factory)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["BERTSMITH_CACHE"] = str(path)
    from bertsmith.train.pretrain.corpus import stdlib_documents

    with open(path.parent / f".{path.name}.lock", "w") as lock:  # one worker scans, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        stdlib_documents()
    yield path
    if given is None:
        os.environ.pop("BERTSMITH_CACHE", None)
    else:
        os.environ["BERTSMITH_CACHE"] = given


@pytest.fixture(scope="session")
def cache(_session_cache):
    """The session's BERTSMITH_CACHE folder, for ``helpers.bertsmith(..., cache=cache)``."""
    return _session_cache


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def quiet_transformers():
    """transformers without its warnings and progress bars, for a module that loads exports
    (``pytestmark = pytest.mark.usefixtures("quiet_transformers")``)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()
