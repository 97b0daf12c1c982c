"""Rank limits of each decomposition for a given weight shape."""

from typing import Sequence

METHODS = ("tucker2", "cp", "svd")


def max_ranks(shape: Sequence[int], method: str) -> tuple[int, ...]:
    """The largest meaningful ranks of ``method`` for a weight of ``shape`` ([T, S] or [T, S, kh, kw]).

    Tucker-2 and SVD are exact at these ranks. CP has no finite exact rank in general; its limit here is the
    break-even rank, at which CP has as many parameters as the dense kernel, so a rank fraction means the same
    thing (a fraction of the dense cost, roughly) for every method.
    """
    t, s = int(shape[0]), int(shape[1])
    kh, kw = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)
    if method == "tucker2":
        return (t, s)
    if method == "svd":
        return (min(t, s * kh * kw),)
    if method == "cp":
        return (max(1, (t * s * kh * kw) // (t + s + kh + kw)),)
    raise ValueError(f"unknown decomposition method {method!r}; expected one of {METHODS}")
