"""Analytic cost (parameters and multiply-accumulates) of a layer, dense or factorised.

A layer's geometry is read once from the traced graph (input/output spatial sizes, number of positions a Linear
is applied to); every cost below is exact for the factor layers that :mod:`nncf_tdplugin.layers` builds.
Bias terms are identical on both sides and are counted in parameters, not in MACs.
"""

from dataclasses import dataclass
from typing import Sequence

from torch import nn


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts of one Conv2d/Linear call. For Linear, ``kh = kw = 1`` and ``in_hw = out_hw = (positions, 1)``
    where positions is the number of vectors the layer maps per sample (1 for a classifier on a flat input)."""

    kind: str  # "conv" | "linear"
    out_channels: int
    in_channels: int
    kh: int
    kw: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    bias: bool

    @classmethod
    def of(cls, module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> "LayerGeometry":
        """Geometry from the module and the shapes of its input/output tensors (batch first)."""
        if isinstance(module, nn.Linear):
            positions = 1
            for d in in_shape[1:-1]:
                positions *= int(d)
            return cls("linear", module.out_features, module.in_features, 1, 1, (positions, 1), (positions, 1),
                       module.bias is not None)
        t, s, kh, kw = module.weight.shape
        return cls("conv", t, s, kh, kw, (int(in_shape[-2]), int(in_shape[-1])),
                   (int(out_shape[-2]), int(out_shape[-1])), module.bias is not None)

    @property
    def in_pixels(self) -> int:
        return self.in_hw[0] * self.in_hw[1]

    @property
    def out_pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]


def dense_params(g: LayerGeometry) -> int:
    return g.out_channels * g.in_channels * g.kh * g.kw + (g.out_channels if g.bias else 0)


def dense_macs(g: LayerGeometry) -> int:
    return g.out_pixels * g.out_channels * g.in_channels * g.kh * g.kw


def factorized_params(g: LayerGeometry, method: str, ranks: Sequence[int]) -> int:
    t, s, k2 = g.out_channels, g.in_channels, g.kh * g.kw
    bias = t if g.bias else 0
    if method == "dense":
        return dense_params(g)
    if method == "svd":
        (r,) = ranks
        return r * (s * k2 + t) + bias
    if method == "tucker2":
        r_out, r_in = ranks
        return s * r_in + k2 * r_in * r_out + r_out * t + bias
    if method == "cp":
        (r,) = ranks
        return r * (s + g.kh + g.kw + t) + bias
    raise ValueError(f"unknown method {method!r}")


def factorized_macs(g: LayerGeometry, method: str, ranks: Sequence[int]) -> int:
    t, s, k2 = g.out_channels, g.in_channels, g.kh * g.kw
    if method == "dense":
        return dense_macs(g)
    if method == "svd":
        (r,) = ranks
        return g.out_pixels * r * (s * k2 + t)
    if method == "tucker2":
        r_out, r_in = ranks
        return g.in_pixels * s * r_in + g.out_pixels * (k2 * r_in * r_out + r_out * t)
    if method == "cp":
        (r,) = ranks
        rows_after_vertical = g.out_hw[0] * g.in_hw[1]
        return g.in_pixels * s * r + rows_after_vertical * g.kh * r + g.out_pixels * (g.kw * r + r * t)
    raise ValueError(f"unknown method {method!r}")


def layer_cost(g: LayerGeometry, metric: str, method: str, ranks: Sequence[int]) -> float:
    """Cost of one layer in ``metric`` ("params" or "flops"; FLOPs are counted as MACs)."""
    if metric == "params":
        return float(factorized_params(g, method, ranks))
    if metric == "flops":
        return float(factorized_macs(g, method, ranks))
    raise ValueError(f"unknown cost metric {metric!r}; expected 'params' or 'flops'")
