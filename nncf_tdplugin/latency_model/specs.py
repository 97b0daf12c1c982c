"""What the latency cost model measures: one layer (dense, or the factor layers of one decomposition) as a plain,
JSON-serialisable spec, and the context a measurement is valid in (CPU, OpenVINO version, precision, threads).

A spec's ``key`` is its identity in the on-disk cache: two layers with the same shapes, geometry, method, ranks and
INT8 flag have the same latency on the same CPU and runtime settings, whichever model they come from.
"""

import hashlib
import os
import platform
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

from torch import nn

CACHE_FORMAT = 2  # bump when what a measurement means changes: old cache files are then left alone
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
              "avx_vnni")


@dataclass(frozen=True)
class LayerSpec:
    kind: str  # "conv" | "linear"
    in_channels: int
    out_channels: int
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    pads_begin: tuple = (0, 0)
    pads_end: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    in_hw: tuple = (1, 1)
    positions: int = 1  # Linear: vectors mapped per sample
    bias: bool = False
    int8: bool = False
    method: str = "dense"
    ranks: tuple = ()
    # torch's padding_mode of a padded conv: anything but "zeros" exports as a Pad node before each padded factor
    pad_mode: str = "zeros"
    # INT8: the layer's input is non-negative (after a ReLU): quantized unsigned, run on u8; else signed (s8)
    unsigned_input: bool = False

    @property
    def key(self) -> str:
        if self.kind == "linear":
            shape = f"linear|{self.in_channels}>{self.out_channels}|p{self.positions}"
        else:
            shape = (f"conv|{self.in_channels}>{self.out_channels}|k{_pair(self.kernel)}|s{_pair(self.stride)}"
                     f"|pb{_pair(self.pads_begin)}|pe{_pair(self.pads_end)}|d{_pair(self.dilation)}|g{self.groups}"
                     f"|hw{_pair(self.in_hw)}")
            if self.pad_mode != "zeros":  # zero-padded keys stay as they were (caches stay valid)
                shape += f"|pm{self.pad_mode}"
        ranks = "x".join(str(r) for r in self.ranks) or "-"
        precision = ("u8" if self.unsigned_input else "i8") if self.int8 else "fp"  # INT8: the input's type
        return f"{shape}|b{int(self.bias)}|{precision}|{self.method}|{ranks}"

    def with_choice(self, method: str, ranks: Sequence[int] = ()) -> "LayerSpec":
        return replace(self, method=method, ranks=tuple(int(r) for r in ranks))

    @property
    def dense(self) -> "LayerSpec":
        return self.with_choice("dense")

    def to_json(self) -> dict:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_json(cls, data: dict) -> "LayerSpec":
        """The inverse of :meth:`to_json` (also after a JSON round trip, which turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "key"})

    @classmethod
    def of(cls, module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int], int8: bool = False,
           unsigned_input: bool = False) -> "LayerSpec":
        """The dense spec of a Conv2d/Linear call with input/output tensor shapes (batch first); ``unsigned_input``:
        its input is non-negative (``GraphLayer.input_nonnegative``), which matters only in INT8."""
        bias = getattr(module, "bias", None) is not None
        unsigned_input = bool(int8 and unsigned_input)
        if isinstance(module, nn.Linear):
            positions = 1
            for d in in_shape[1:-1]:
                positions *= int(d)
            return cls("linear", int(module.in_features), int(module.out_features), positions=positions, bias=bias,
                       int8=int8, unsigned_input=unsigned_input)
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"no latency spec for {type(module).__name__}; expected Conv2d or Linear")
        kernel, stride, dilation = tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)
        in_hw, out_hw = (int(in_shape[-2]), int(in_shape[-1])), (int(out_shape[-2]), int(out_shape[-1]))
        begin, end = [], []
        for axis in range(2):
            total = max((out_hw[axis] - 1) * stride[axis] + dilation[axis] * (kernel[axis] - 1) + 1 - in_hw[axis], 0)
            if isinstance(module.padding, str):
                b = 0 if module.padding == "valid" else total // 2
            else:
                b = int(module.padding[axis])
            begin.append(b)
            end.append(max(total - b, 0))
        padded = any(begin) or any(end)
        pad_mode = module.padding_mode if padded else "zeros"
        # int(): a size attribute may be a 0-d tensor (NNCF's channel pruning sets some that way); the spec is JSON
        return cls("conv", int(module.in_channels), int(module.out_channels), kernel, stride, tuple(begin),
                   tuple(end), dilation, int(module.groups), in_hw, 1, bias, int8, pad_mode=pad_mode,
                   unsigned_input=unsigned_input)


def _pair(p) -> str:
    return f"{p[0]}x{p[1]}"


def cpu_identity() -> str:
    """CPU model name, usable core count and the vector/matrix ISA flags OpenVINO's kernels depend on."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "+".join(f for f in _CPU_FLAGS if f in flags)
    return f"{name} | {usable_cpus()} cpus | {isa}"


def usable_cpus() -> int:
    """The cores this process may run on (its affinity set, e.g. under ``taskset`` or a cpuset), which is what
    OpenVINO's automatic thread count follows; ``os.cpu_count()`` counts the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class MeasurementContext:
    """Everything besides the layer that a latency depends on; measurements are cached per context."""

    precision: str = "default"  # "f32" | "bf16" | "default" (the CPU's choice: bf16 on AMX / AVX512-BF16)
    threads: Optional[int] = None  # INFERENCE_NUM_THREADS; None: OpenVINO's choice
    warmup: int = 10
    iterations: int = 20
    repeats: int = 3
    cpu: str = ""
    openvino: str = ""

    @classmethod
    def here(cls, precision: str = "default", threads: Optional[int] = None, **timing) -> "MeasurementContext":
        import openvino

        return cls(precision, threads, cpu=cpu_identity(), openvino=openvino.__version__.split("-")[0], **timing)

    @property
    def cache_id(self) -> str:
        """File name of this context's cache (timing settings excluded: they change noise, not the value)."""
        threads = self.threads if self.threads else "auto"
        digest = hashlib.sha1(f"{self.cpu}|{self.openvino}".encode()).hexdigest()[:10]
        return f"v{CACHE_FORMAT}_ov{self.openvino}_{self.precision}_t{threads}_{digest}"

    def to_json(self) -> dict:
        return asdict(self)
