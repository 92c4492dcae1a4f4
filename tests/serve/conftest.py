"""Fixtures for the serve tests.

Two kinds of model:
- a tiny random Llama with a byte-level tokenizer built in code (milliseconds per step), for
  the engine's batching/prefix-cache logic and for servers that must start fast;
- the embedded SmolLM2-135M behind one session-wide ``apidistill serve`` child, driven by the
  official SDKs, plus one in-process copy for direct forward-pass checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_tokenizer():
    """A byte-level BPE tokenizer without merges: one token per byte, plus chat specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from apidistill.vocab import BYTE_LEVEL_ALPHABET

    alphabet = sorted(BYTE_LEVEL_ALPHABET.items(), key=lambda kv: kv[1])
    vocab = {ch: i for i, (ch, _) in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_lm(vocab_size: int, seed: int = 0):
    """A 2-layer Llama with GQA (4 query heads, 2 kv heads), initialised with large weights so
    that logits are peaked and greedy choices do not hinge on float rounding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def byte_tokenizer():
    return build_byte_tokenizer()


@pytest.fixture
def tiny_lm(byte_tokenizer):
    """A fresh tiny model per test (the engine switches its attention implementation).

    Runs single-threaded: for matrices this small, thread hand-offs cost more than the maths,
    and on a busy CI machine 2 threads made these tests 30x slower (7.6 s vs 0.24 s).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build_tiny_lm(len(byte_tokenizer))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, byte_tokenizer) -> Path:
    """The tiny model saved as a model folder: ``apidistill serve --model DIR`` starts in
    seconds, for server tests that do not need a real language model."""
    out = tmp_path_factory.mktemp("tiny-model")
    model = build_tiny_lm(len(byte_tokenizer))
    model.generation_config.eos_token_id = byte_tokenizer.eos_token_id
    model.save_pretrained(out)
    byte_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_server() -> Iterator[object]:
    """One ``apidistill serve`` child on the embedded SmolLM2 for the whole session."""
    from apidistill.serve.launcher import launch_server

    with launch_server("smollm2-135m-instruct", max_batch_size=8, startup_timeout=300) as srv:
        yield srv


@pytest.fixture(scope="session")
def smol_local():
    """SmolLM2 in this process, for direct forward passes to check the server against."""
    import torch

    from apidistill.model_loading import load_model, load_tokenizer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return load_model("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct")
