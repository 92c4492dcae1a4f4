"""Load the student as the run file asks: dtype, attention kernel, QLoRA, checkpointing.

A 0.5–8B student on one GPU needs weights in bf16/fp16 (not fp32 weights under autocast),
often a 4-bit base (QLoRA) and activation checkpointing. Every setting that needs hardware
or a package this machine lacks is refused by :func:`check_student_settings` before the
model is loaded, with the key to change — a run that cannot work fails in seconds.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["check_student_settings", "load_student_model", "quantization_config"]

# Attention kernels that need a package and a CUDA GPU: kernel → (import name, pip name).
_KERNEL_PACKAGES = {
    "flash_attention_2": ("flash_attn", "flash-attn"),
    "flash_attention_3": ("flash_attn_interface", "flash-attn-3 (built from the hopper/ folder)"),
}


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_student_settings(training: TrainingConfig) -> None:
    """Raise :class:`ConfigError` for a setting this machine cannot run (see module doc)."""
    if training.quantization:
        key = "training.quantization"
        if not _has_cuda():
            raise ConfigError(
                f"{training.quantization} QLoRA needs a CUDA GPU (bitsandbytes quantizes "
                "on the GPU); none is visible here",
                key=key,
                hint="remove training.quantization to train a LoRA adapter over unquantized "
                "weights (training.dtype: bfloat16 halves their memory), or run on a CUDA GPU",
            )
        if not _has_package("bitsandbytes"):
            raise ConfigError(
                f"{training.quantization} QLoRA needs the bitsandbytes package",
                key=key,
                hint="pip install bitsandbytes (or remove training.quantization)",
            )
    kernel = training.attn_implementation
    if kernel in _KERNEL_PACKAGES:
        module, pip_name = _KERNEL_PACKAGES[kernel]
        if not _has_cuda() or not _has_package(module):
            raise ConfigError(
                f"attention {kernel!r} needs a CUDA GPU and the {pip_name} package"
                + ("" if _has_cuda() else "; no CUDA GPU is visible here"),
                key="training.attn_implementation",
                hint="use sdpa (PyTorch's fused attention, no extra package) or eager",
            )
    if training.dtype == "bfloat16" and _has_cuda():
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "this GPU has no bfloat16 support",
                key="training.dtype",
                hint="use dtype: float16 with LoRA, or float32",
            )


def quantization_config(training: TrainingConfig) -> Any:
    """The ``BitsAndBytesConfig`` for ``training.quantization`` (None without one).

    4-bit is QLoRA's recipe: NF4 with double quantization, computing in the run's dtype
    (bfloat16 when the weights are left at float32, as the QLoRA paper does).
    """
    if not training.quantization:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if training.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if training.dtype == "float32" else getattr(torch, training.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_student_model(student: StudentConfig, training: TrainingConfig) -> torch.nn.Module:
    """The student model, ready for LoRA (or full fine-tuning), loaded per the run file."""
    from apidistill.model_loading import load_model

    check_student_settings(training)
    quant = quantization_config(training)
    # A quantized base is placed on this process's GPU at load time (bitsandbytes cannot
    # be moved after); under a launcher every rank holds its own copy on its own device.
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if quant is not None else None
    model = load_model(
        student.model,
        dtype=training.dtype,
        attn_implementation=training.attn_implementation,
        quantization_config=quant,
        device_map=device_map,
    )
    model.config.use_cache = False  # the KV cache is useless in training, and breaks checkpointing
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model
