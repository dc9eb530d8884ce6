import os
import warnings

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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
