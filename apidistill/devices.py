"""Where an inference model runs and in which precision: serve, eval generation, held-out KL.

``auto`` means the first CUDA GPU in bfloat16 when torch sees one (half the memory and the
GPU's fast path), else the CPU in float32 (CPUs have no fast bf16 matmul in most builds, and
float32 keeps CPU results equal to what the tests pin). An explicit choice is checked here,
so that ``--device cuda`` on a machine without a GPU is one clear error naming the option,
not a torch traceback deep inside a load.

Training keeps its own settings (``training.dtype``); this module imports torch lazily so the
CLI's ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Literal, get_args

from apidistill.errors import ConfigError

__all__ = ["DEVICES", "DTYPES", "DeviceName", "DtypeName", "select_device"]

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DEVICES: tuple[str, ...] = get_args(DeviceName)
DTYPES: tuple[str, ...] = get_args(DtypeName)


def select_device(
    device: str = "auto", dtype: str = "auto", *, key: str = "device"
) -> tuple[str, str]:
    """``(device, dtype)`` to load with, ``auto`` resolved: (``cuda``, ``bfloat16``) when a
    CUDA GPU is visible, else (``cpu``, ``float32``). ``key`` names the option in errors
    (``--device``, ``serve.device``, ...)."""
    import torch

    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise ConfigError(
            f"unknown device {device!r}", key=key, hint=f"one of: {', '.join(DEVICES)}"
        )
    if dtype not in DTYPES:
        dkey = key.replace("device", "dtype")
        raise ConfigError(f"unknown dtype {dtype!r}", key=dkey, hint=f"one of: {', '.join(DTYPES)}")
    has_cuda = bool(torch.cuda.is_available())
    if base == "auto":
        device = "cuda" if has_cuda else "cpu"
    elif base == "cuda" and not has_cuda:
        raise ConfigError(
            "device 'cuda' was asked for but torch sees no CUDA GPU",
            key=key,
            hint="use --device auto (or cpu), or install a CUDA build of torch on a GPU machine",
        )
    elif base == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was asked for but torch sees no Apple GPU", key=key)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        dtype = "float16"  # pre-Ampere GPUs: half precision they can run
    return device, dtype
