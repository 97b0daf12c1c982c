"""Shared helpers of the benchmarks: building compressed models through the public config API, evaluating
output agreement, and writing JSON + printing a table."""

import json
import logging
import os
import pathlib
import sys
import time
from typing import Callable, Optional

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")  # gcc build of NNCF's extension on a busy machine

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing, registers the algorithm)
import nncf
import torch
from nncf.torch import create_compressed_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))  # natural_images
sys.path.insert(0, str(ROOT))  # benchmarks.data_models when run as a script


def quiet_nncf() -> None:
    logging.getLogger("nncf").setLevel(logging.WARNING)


def compress_with_config(model: torch.nn.Module, input_size, td_block: dict, extra_algorithms=(),
                         calibration: Optional[torch.Tensor] = None):
    """``create_compressed_model`` with a config made of ``td_block`` (+ other algorithm blocks); returns
    (controller, model, seconds). ``calibration`` (input images) is registered as NNCF's init data."""
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": list(input_size)},
                                        "compression": [td_block, *extra_algorithms]})
    if calibration is not None:
        from nncf.torch import register_default_init_args

        data = torch.utils.data.TensorDataset(calibration, torch.zeros(len(calibration), dtype=torch.long))
        config = register_default_init_args(config, torch.utils.data.DataLoader(data, batch_size=64))
    start = time.perf_counter()
    ctrl, compressed = create_compressed_model(model, config)
    return ctrl, compressed.eval(), time.perf_counter() - start


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict:
    return {"rel_logit_error": float((out - ref).norm() / ref.norm()),
            "top1_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean())}


def write_and_print(rows: list[dict], columns: list[str], path: Optional[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(rows, indent=2))
        print(f"wrote {path}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)


def load_factory(spec: str) -> Callable[[], torch.nn.Module]:
    """'package.module:function' -> the function (a held-out model for --model custom)."""
    import importlib

    module, _, fn = spec.partition(":")
    if not fn:
        raise SystemExit(f"--model-fn must look like 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(module), fn)
