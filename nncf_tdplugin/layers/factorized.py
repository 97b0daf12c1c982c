"""Factor layers: a dense ``nn.Conv2d``/``nn.Linear`` becomes a small sequence of plain layers.

The containers are ``nn.Sequential`` subclasses whose children are ordinary ``nn.Conv2d``/``nn.Linear``
modules, so NNCF wraps each factor like any other layer (each gets its own INT8 quantizers) and ``torch.onnx`` /
``ov.convert_model`` export them with no custom ops. Child names say what each factor is:

| method | children |
|---|---|
| ``tucker2`` | ``in_proj`` 1x1 S->R_in, ``core`` k x k R_in->R_out (geometry of the original), ``out_proj`` 1x1 R_out->T |
| ``cp`` | ``in_proj`` 1x1 S->R, ``vertical`` kh x 1 depthwise, ``horizontal`` 1 x kw depthwise, ``out_proj`` 1x1 R->T |
| ``svd`` (conv) | ``in_proj`` S->R with the original kernel/stride/padding, ``out_proj`` 1x1 R->T |
| ``svd`` (Linear) | ``in_proj`` Linear S->R, ``out_proj`` Linear R->T |

Why these are exact at full rank: only the first factor sees the raw input and only the last carries the bias;
every factor before the spatial one is bias-free and linear per pixel, so zero padding of its output equals
zero padding of the input, and reflect/replicate/circular padding commutes with a per-pixel linear map.
CP splits stride, padding and dilation per axis between its two depthwise factors.

:func:`build_factorized` makes the structure for a plan (used on resume, before a state_dict is loaded);
:func:`decompose_layer` also fills it from the dense weights.
"""

from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
from torch import nn

from nncf_tdplugin.decomposition import cp_decompose, svd_decompose, tucker2_decompose
from nncf_tdplugin.decomposition.ranks import METHODS, max_ranks
from nncf_tdplugin.decomposition.whitening import InputWhitening, weight_times_input


class _Decomposed(nn.Sequential):
    """Factor layers of one dense layer, in order; ``method`` and ``ranks`` say how it was factorised."""

    def __init__(self, method: str, ranks: Sequence[int], factors: "OrderedDict[str, nn.Module]"):
        super().__init__(factors)
        self.method = method
        self.ranks = tuple(int(r) for r in ranks)

    def extra_repr(self) -> str:
        return f"method={self.method}, ranks={self.ranks}"


class DecomposedConv2d(_Decomposed):
    """A ``Conv2d`` replaced by its factor convolutions (see the module docstring for the layout)."""


class DecomposedLinear(_Decomposed):
    """A ``Linear`` replaced by two thinner ``Linear`` layers (truncated SVD)."""


DecomposedLayer = Union[DecomposedConv2d, DecomposedLinear]


def _own_forward(module: nn.Module) -> Optional[type]:
    """The class of a Conv2d/Linear subclass that overrides ``forward`` (e.g. a conv with computed "same" padding,
    a weight-standardised conv), or None when the forward is torch's own or NNCF's wrapper around it. Factor layers
    reproduce only the plain forward, so such a layer must stay dense."""
    for cls in type(module).__mro__:
        if "forward" in cls.__dict__:
            if cls in (nn.Conv2d, nn.Linear) or cls.__module__.startswith("nncf."):
                return None
            return cls
    return None


def is_decomposable(module: nn.Module) -> Optional[str]:
    """``None`` if ``module`` can be decomposed, else the reason it cannot."""
    custom = _own_forward(module) if isinstance(module, (nn.Conv2d, nn.Linear)) else None
    if custom is not None:
        base = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
        return f"custom forward ({custom.__name__} overrides {base}.forward)"
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped conv (groups={module.groups})"
        if isinstance(module.weight, nn.parameter.UninitializedParameter) or module.weight.dim() != 4:
            return "uninitialized conv"
        return None
    return f"unsupported layer type {type(module).__name__}"


def full_ranks(module: nn.Module, method: str) -> tuple[int, ...]:
    """The largest meaningful ranks of ``method`` for ``module`` (see :func:`max_ranks`)."""
    return max_ranks(module.weight.shape, method)


def check_ranks(module: nn.Module, method: str, ranks: Sequence[int], where: str = "layer") -> tuple[int, ...]:
    """Validate ``ranks`` for ``method`` on ``module``; returns them as a tuple of ints."""
    if method not in METHODS:
        raise ValueError(f"{where}: unknown decomposition method {method!r}; expected one of {METHODS}")
    if isinstance(module, nn.Linear) and method != "svd":
        raise ValueError(f"{where}: a Linear layer can only be decomposed with 'svd', not {method!r}")
    if isinstance(module, nn.Conv2d) and method in ("tucker2", "cp") and module.weight.shape[2:] == (1, 1):
        raise ValueError(f"{where}: a 1x1 conv is a matrix; use 'svd' for it, not {method!r}")
    ranks = tuple(int(r) for r in ranks)
    expected = 2 if method == "tucker2" else 1
    if len(ranks) != expected:
        raise ValueError(f"{where}: method {method!r} takes {expected} rank(s), got {list(ranks)}")
    limits = full_ranks(module, method)
    if method == "cp":  # CP may exceed its break-even rank; it just would not pay off
        limits = (max(limits[0], 4 * limits[0]),)
    for r, limit in zip(ranks, limits):
        if not 1 <= r <= limit:
            raise ValueError(f"{where}: rank {r} is out of range for {method!r} on this layer: must be in [1, {limit}]")
    return ranks


def _conv(in_ch, out_ch, kernel, stride=1, padding=0, dilation=1, groups=1, bias=False, padding_mode="zeros", like=None):
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias, padding_mode)
    if like is not None:
        conv.to(device=like.weight.device, dtype=like.weight.dtype)
    return conv


def _split_axis(value, axis: int):
    """Per-axis part of a conv geometry argument (an int pair, or a padding string which applies to both)."""
    if isinstance(value, str):
        return value
    return value[axis]


def build_factorized(module: nn.Module, method: str, ranks: Sequence[int]) -> DecomposedLayer:
    """The factor layers of ``method`` at ``ranks`` for ``module``, with uninitialised weights."""
    ranks = check_ranks(module, method, ranks)
    if isinstance(module, nn.Linear):
        (r,) = ranks
        with_bias = module.bias is not None
        in_proj = nn.Linear(module.in_features, r, bias=False)
        out_proj = nn.Linear(r, module.out_features, bias=with_bias)
        for m in (in_proj, out_proj):
            m.to(device=module.weight.device, dtype=module.weight.dtype)
        return DecomposedLinear(method, ranks, OrderedDict(in_proj=in_proj, out_proj=out_proj))

    c = module
    t, s, kh, kw = c.weight.shape
    bias = c.bias is not None
    geometry = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, padding_mode=c.padding_mode)
    if method == "svd":
        (r,) = ranks
        layers = OrderedDict(
            in_proj=_conv(s, r, (kh, kw), **geometry, like=c), out_proj=_conv(r, t, 1, bias=bias, like=c)
        )
    elif method == "tucker2":
        r_out, r_in = ranks
        layers = OrderedDict(
            in_proj=_conv(s, r_in, 1, like=c),
            core=_conv(r_in, r_out, (kh, kw), **geometry, like=c),
            out_proj=_conv(r_out, t, 1, bias=bias, like=c),
        )
    else:  # cp
        (r,) = ranks
        pad_h, pad_w = _split_axis(c.padding, 0), _split_axis(c.padding, 1)
        layers = OrderedDict(
            in_proj=_conv(s, r, 1, like=c),
            vertical=_conv(
                r, r, (kh, 1), (c.stride[0], 1), pad_h if isinstance(pad_h, str) else (pad_h, 0),
                (c.dilation[0], 1), groups=r, padding_mode=c.padding_mode, like=c,
            ),
            horizontal=_conv(
                r, r, (1, kw), (1, c.stride[1]), pad_w if isinstance(pad_w, str) else (0, pad_w),
                (1, c.dilation[1]), groups=r, padding_mode=c.padding_mode, like=c,
            ),
            out_proj=_conv(r, t, 1, bias=bias, like=c),
        )
    return DecomposedConv2d(method, ranks, layers)


@torch.no_grad()
def decompose_layer(
    module: nn.Module, method: str, ranks: Sequence[int], tucker_iterations: int = 10, cp_iterations: int = 200,
    seed: int = 0, output_scale: Optional[torch.Tensor] = None, input_whitening: Optional[InputWhitening] = None,
) -> DecomposedLayer:
    """Decompose a dense ``module`` into factor layers initialised from its weights.

    ``output_scale`` (one positive value per output channel) makes the approximation weighted: the factors
    approximate ``diag(scale) @ W`` and the last factor is divided back, so errors count in proportion to how much
    each output channel matters downstream (e.g. gamma / sigma of a following BatchNorm; see
    :func:`importance_weighted`). ``input_whitening`` (from the layer's input moment ``M``, see
    :mod:`nncf_tdplugin.decomposition.whitening`) makes the factors approximate ``W M^(1/2)`` and multiplies the
    first factor back by ``M^(-1/2)``: the error is then the expected error of the outputs on the calibration
    inputs. Exact at full rank either way.
    """
    layer = build_factorized(module, method, ranks)
    weight = weighted_weight(module.weight, output_scale, input_whitening)
    if method == "svd":
        f = svd_decompose(weight.reshape(weight.shape[0], -1), layer.ranks[0])
        layer.in_proj.weight.copy_(f.first.reshape(layer.in_proj.weight.shape))
        layer.out_proj.weight.copy_(f.last.reshape(layer.out_proj.weight.shape))
    elif method == "tucker2":
        f = tucker2_decompose(weight, layer.ranks, n_iter_max=tucker_iterations)
        layer.in_proj.weight.copy_(f.first[:, :, None, None])
        layer.core.weight.copy_(f.core)
        layer.out_proj.weight.copy_(f.last[:, :, None, None])
    else:
        f = cp_decompose(weight, layer.ranks[0], n_iter_max=cp_iterations, random_state=seed)
        layer.in_proj.weight.copy_(f.first[:, :, None, None])
        layer.vertical.weight.copy_(f.vertical[:, None, :, None])
        layer.horizontal.weight.copy_(f.horizontal[:, None, None, :])
        layer.out_proj.weight.copy_(f.last[:, :, None, None])
    if output_scale is not None:
        shape = (-1,) + (1,) * (layer.out_proj.weight.dim() - 1)
        layer.out_proj.weight.div_(output_scale.to(layer.out_proj.weight).reshape(shape))
    if input_whitening is not None:
        layer.in_proj.weight.copy_(weight_times_input(layer.in_proj.weight, input_whitening.inv_sqrt))
    if module.bias is not None:
        layer.out_proj.bias.copy_(module.bias)
    return layer


def importance_weighted(weight: torch.Tensor, output_scale: torch.Tensor) -> torch.Tensor:
    """``diag(output_scale) @ W``: the weight as the next layer sees it (per output channel)."""
    return weight * output_scale.to(weight).reshape((-1,) + (1,) * (weight.dim() - 1))


def weighted_weight(weight: torch.Tensor, output_scale: Optional[torch.Tensor] = None,
                    input_whitening: Optional[InputWhitening] = None) -> torch.Tensor:
    """``diag(output_scale) @ W @ M^(1/2)``: what the decompositions (and rank selection) approximate when either
    weighting is on; ``W`` itself when neither is."""
    if output_scale is not None:
        weight = importance_weighted(weight, output_scale)
    if input_whitening is not None:
        weight = weight_times_input(weight, input_whitening.sqrt)
    return weight


@torch.no_grad()
def reconstruct_weight(layer: DecomposedLayer) -> torch.Tensor:
    """The dense weight that ``layer`` computes (for error reports and tests)."""
    first = layer.in_proj.weight
    last = layer.out_proj.weight.flatten(1)  # [T, R]
    if layer.method == "svd":
        return (last @ first.flatten(1)).reshape(last.shape[0], *first.shape[1:])
    if layer.method == "tucker2":
        return torch.einsum("ab,bcij,cd->adij", last, layer.core.weight, first.flatten(1))
    v = layer.vertical.weight[:, 0, :, 0]
    h = layer.horizontal.weight[:, 0, 0, :]
    return torch.einsum("tr,rs,ri,rj->tsij", last, first.flatten(1), v, h)


def relative_error(dense_weight: torch.Tensor, layer: DecomposedLayer,
                   output_scale: Optional[torch.Tensor] = None,
                   input_whitening: Optional[InputWhitening] = None) -> float:
    """||W - W_hat||_F / ||W||_F, weighted per output channel by ``output_scale`` and on the input side by
    ``M^(1/2)`` of ``input_whitening`` if given (then the relative RMS error of the outputs on the calibration
    inputs, per kernel position)."""
    w = dense_weight.detach()
    w_hat = reconstruct_weight(layer).reshape(w.shape)
    w, w_hat = weighted_weight(w, output_scale, input_whitening), weighted_weight(w_hat, output_scale, input_whitening)
    return float((w_hat - w).norm() / w.norm().clamp_min(1e-12))
