import os

# NNCF compiles its CPU quantization extension with gcc at first use; on a busy 2-core machine that can exceed
# NNCF's default 60 s limit (seen in CI), so allow more time.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: E402,F401  (must come before anything imports nncf.torch)
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
