"""Run dense eigen/singular value decompositions on one thread.

LAPACK's symmetric eigensolvers and SVDs spend most of their time in memory-bound, barrier-heavy stages
(tridiagonal/bidiagonal reduction), so a second thread gains little on an idle CPU, and when the cores are busy
(a training job, a data loader, CI) the threads of numpy's OpenBLAS and of torch spin-wait on each other:
measured on this 2-core host beside one busy process, ``eigh`` of a 512 x 512 Gram matrix took 0.38 s (numpy)
and 0.50 s (torch) with the default two threads against 0.05 s on one; CP-ALS (many small products and
solves) of a 128 x 128 x 3 x 3 kernel at rank 64 took 47 s against 4.5 s. The large matrix products outside
these blocks (Gram matrices, HOOI's mode products) stay multi-threaded.
"""

from contextlib import contextmanager
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def serial_lapack() -> Iterator[None]:
    """One thread for numpy's BLAS/LAPACK and for torch's intra-op pool inside the block; restored afterwards."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(torch_threads)
