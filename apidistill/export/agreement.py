"""Does a GGUF answer like the student it was made from? Greedy answers side by side.

An export is checked, not assumed: quantized weights (and llama.cpp's default repeat
penalty) can change greedy answers. Both engines get the same prompt token ids (the
student's chat template, rendered by its tokenizer), decode greedily (llama.cpp with
temperature 0 and repeat penalty 1.0, threads = physical cores: OpenMP threads past them
spin on a loaded machine) and the answers are compared as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Agreement", "gguf_agreement"]


@dataclass
class Agreement:
    """How many prompts got the same greedy answer from the GGUF and from transformers."""

    total: int = 0
    same: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (transformers, gguf)

    @property
    def rate(self) -> float:
        return self.same / self.total if self.total else 0.0


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return [int(i) for i in ids]


def _hf_answer(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> str:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()


def gguf_agreement(
    gguf: Path | str,
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_tokens: int = 40,
    threads: int | None = None,
) -> Agreement:
    """Greedy answers of ``gguf`` (llama.cpp) against ``model`` (transformers) for each
    conversation (messages without the answer)."""
    import llama_cpp

    from apidistill.serve.engine import physical_cores

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=2048,
        n_threads=threads or physical_cores(),
        n_threads_batch=threads or physical_cores(),
        seed=0,
        verbose=False,
    )
    result = Agreement()
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    try:
        for messages in conversations:
            ids = _prompt_ids(tokenizer, messages)
            mine = _hf_answer(model, tokenizer, ids, max_tokens)
            llm.reset()
            got: list[int] = []
            for tok in llm.generate(ids, temp=0.0, repeat_penalty=1.0, top_k=1, reset=True):
                if tok in eos or len(got) >= max_tokens:
                    break
                got.append(tok)
            theirs = tokenizer.decode(got, skip_special_tokens=True).strip()
            result.total += 1
            result.same += mine == theirs
            result.pairs.append((mine, theirs))
    finally:
        llm.close()
    return result
