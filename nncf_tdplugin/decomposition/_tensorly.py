"""Run tensorly without touching the user's global backend.

Every tensorly call in this package goes through :func:`numpy_backend`, which switches the backend for the
current thread only and restores the previous one afterwards.
"""

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import tensorly as tl
import torch


@contextmanager
def numpy_backend() -> Iterator[None]:
    with tl.backend_context("numpy", local_threadsafe=True):
        yield


def to_numpy(weight: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a weight (decompositions are computed in double precision)."""
    return weight.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def to_torch(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=like.device, dtype=like.dtype)
