"""Test helpers for the train stage (tokenizers and tiny models built in code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apidistill.testing.tiny_tokenizer import CHATML, char_tokenizer

__all__ = ["CHATML", "char_tokenizer", "save_tiny_llama", "tiny_llama"]


def tiny_llama(*, hidden: int = 32, seed: int = 0) -> Any:
    """A random-init two-layer Llama of width ``hidden`` on the char tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_llama(folder: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """Write :func:`tiny_llama` + the char tokenizer into ``folder``.

    The folder loads like any local student (``load_model(path)``); ``seed`` fixes its weights.
    """
    tiny_llama(hidden=hidden, seed=seed).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
