"""Fixtures for the export tests: a tiny random llama student that shares the embedded
SmolLM2's tokenizer (so its GGUF can take the embedded GGUF's tokenizer metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_smol_dir(tmp_path_factory) -> Path:
    """A 2-layer llama with SmolLM2's vocabulary, saved with SmolLM2's tokenizer and a
    baked system prompt: small enough to export in seconds, real enough for llama.cpp."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from apidistill.export.student import bake_system_prompt
    from apidistill.model_loading import load_tokenizer

    tok = load_tokenizer(BASE)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms of random scale, so a norm mapped to the wrong name shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    folder = tmp_path_factory.mktemp("tiny_smol")
    model.save_pretrained(folder)
    tok.chat_template = bake_system_prompt(tok.chat_template, "Extract the order number.")
    tok.save_pretrained(folder)
    (folder / "base_model.txt").write_text(BASE + "\n")
    return folder
