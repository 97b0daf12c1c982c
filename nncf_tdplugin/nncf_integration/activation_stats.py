"""Input statistics of the candidate layers for activation-aware decomposition (``decomposition.activation_aware``).

The calibration data is NNCF's own: the data loader that ``nncf.torch.register_default_init_args(config, loader)``
registers (quantization's range initialisation and BatchNorm adaptation read the same one). The dense model runs in
eval mode on about ``activation_samples`` samples, with forward hooks on the candidate layers summing ``x x^T`` over
samples and pixels of each layer's input channels; the mean is the moment ``M`` that
:class:`~nncf_tdplugin.decomposition.whitening.InputWhitening` turns into the weighting.
"""

import torch
from nncf.common.logging import nncf_logger
from nncf.config.structures import QuantizationRangeInitArgs
from torch import nn
from tqdm.auto import tqdm

from nncf_tdplugin.config import ALGO_NAME, TDConfigError


def _moment_update(module: nn.Module, x: torch.Tensor, sums: dict, counts: dict, key: str) -> None:
    x = x.detach().double()
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])  # every vector the layer maps
    else:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).T  # [N*H*W, C]: every pixel's channel vector
    sums[key] = sums.get(key, 0) + flat.T @ flat
    counts[key] = counts.get(key, 0) + flat.shape[0]


@torch.no_grad()
def collect_input_moments(model: nn.Module, modules: dict[str, nn.Module], config, num_samples: int,
                          ) -> dict[str, torch.Tensor]:
    """``{name: E[x x^T]}`` (float64, C_in x C_in) of the input of each module in ``modules`` (name -> module),
    over at least ``num_samples`` samples of the NNCF init data loader registered on ``config``."""
    if not modules:
        return {}
    if not config.has_extra_struct(QuantizationRangeInitArgs):
        raise TDConfigError(
            f"{ALGO_NAME}.decomposition.activation_aware: needs calibration data; register it before "
            f"create_compressed_model with nncf.torch.register_default_init_args(config, train_loader)")
    loader = config.get_extra_struct(QuantizationRangeInitArgs).data_loader
    sums: dict = {}
    counts: dict = {}
    handles = [m.register_forward_hook(lambda mod, args, out, key=name: _moment_update(mod, args[0], sums, counts,
                                                                                        key))
               for name, m in modules.items()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with tqdm(total=num_samples, desc=f"{ALGO_NAME}: input statistics", unit="sample", disable=None) as bar:
            for batch in loader:
                args, kwargs = loader.get_inputs(batch)
                args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
                kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                model(*args, **kwargs)
                n = _batch_size(args, kwargs)
                seen += n
                bar.update(min(n, num_samples - bar.n))
                if seen >= num_samples:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [name for name in modules if name not in counts]
    if missing:
        raise TDConfigError(
            f"{ALGO_NAME}.decomposition.activation_aware: the calibration data never reached layer(s) "
            f"{missing[:5]}; they cannot be weighted by their inputs")
    if seen < num_samples:
        nncf_logger.warning(f"{ALGO_NAME}: input statistics from {seen} samples (the init data loader ran out before "
                            f"decomposition.activation_samples = {num_samples})")
    return {name: sums[name] / counts[name] for name in modules}


def _batch_size(args: tuple, kwargs: dict) -> int:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return 1
