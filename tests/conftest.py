import os

# NNCF compiles its CPU quantization extension with gcc at first use; on a busy 2-core machine that can exceed
# NNCF's default 60 s limit (seen in CI), so allow more time.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: E402,F401  (must come before anything imports nncf.torch)
import pytest
import torch
from hypothesis import settings

# CI's verdict must not depend on a fresh random draw: the default profile tests the same examples on every run;
# `HYPOTHESIS_PROFILE=explore pytest ...` draws new ones
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
