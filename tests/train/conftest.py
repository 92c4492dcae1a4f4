"""Fixtures for the train stage: a tiny chat model built in code, and the embedded SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import save_tiny_llama


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory) -> Path:
    """A folder with a tiny random Llama + the char tokenizer: loads via load_model(path)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_chat"), hidden=32, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_records(tiny_chat_dir):
    """Teacher records with top-k logprobs from a second random tiny model (same tokenizer)."""
    import torch
    from transformers import LlamaForCausalLM

    from apidistill.model_loading import load_tokenizer
    from apidistill.train.localteacher import teacher_records

    tok = load_tokenizer(str(tiny_chat_dir))
    torch.manual_seed(1)
    teacher = LlamaForCausalLM.from_pretrained(tiny_chat_dir)
    with torch.no_grad():  # a different, sharper teacher than the student's random init
        for p in teacher.parameters():
            p.mul_(3.0)
    inputs = [f"order {n} for item {chr(97 + n % 26)}" for n in range(24)]
    return teacher_records(teacher, tok, inputs, max_new_tokens=12, top_k=5)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct tokenizer, loaded once per session."""
    from apidistill.model_loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")
