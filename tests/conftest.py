import nncf_tdplugin  # noqa: F401  (must come before anything imports nncf.torch)
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
