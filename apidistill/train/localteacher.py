"""A local model as the teacher, in-process: greedy answers with per-token top-k logprobs.

Tests, benchmarks and offline experiments need teacher records whose logprobs are exact
and free; this produces them the way a self-hosted teacher (``apidistill serve``, vLLM)
would: token ids, bytes, the sampled token's logprob and the top-k alternatives at T = 1,
with the final end-of-turn entry included when generation stopped on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from apidistill.records import Message, Record, TokenLogprob, TopLogprob
from apidistill.train.align import StudentVocab
from apidistill.train.collate import end_of_turn_id, render_student_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["teacher_records"]


def _entry(tid: int, logq: torch.Tensor, k: int, tok, vocab: StudentVocab) -> TokenLogprob:
    def piece(i: int) -> tuple[str, list[int] | None]:
        raw = vocab.token_bytes[i] if i < len(vocab.token_bytes) else None
        text = raw.decode("utf-8", "replace") if raw is not None else tok.decode([i])
        return text, list(raw) if raw is not None else None

    vals, ids = logq.topk(k)
    top = []
    for v, i in zip(vals.tolist(), ids.tolist(), strict=True):
        text, raw = piece(i)
        top.append(TopLogprob(token_id=i, token=text, bytes=raw, logprob=v))
    text, raw = piece(tid)
    return TokenLogprob(token_id=tid, token=text, bytes=raw, logprob=float(logq[tid]), top=top)


@torch.no_grad()
def teacher_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    *,
    teacher_prompt: Sequence[Message] = (),
    max_new_tokens: int = 32,
    top_k: int = 20,
    batch_size: int = 8,
    id_prefix: str = "r",
) -> list[Record]:
    """One greedy teacher answer per input, with top-``top_k`` logprobs per token.

    The teacher sees ``teacher_prompt`` (the "prototype prompt": a system turn and few-shot
    user/assistant turns) before each input; the record keeps only the user turn, as harvest
    does, so the student learns to answer without it.
    """
    vocab = StudentVocab.build(tokenizer)
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    records: list[Record] = []
    model.eval()
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start : start + batch_size])
        prompts = [
            render_student_prompt(
                tokenizer, [*teacher_prompt, Message(role="user", content=x)], None
            )
            for x in chunk
        ]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues every row
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad,
            eos_token_id=eot,
        )
        steps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B, S, V]
        gen = out.sequences[:, width:]
        for i, text_in in enumerate(chunk):
            entries: list[TokenLogprob] = []
            for s in range(gen.shape[1]):
                tid = int(gen[i, s])
                entries.append(_entry(tid, steps[i, s], top_k, tokenizer, vocab))
                if tid == eot:
                    break
            body = [e for e in entries if e.token_id != eot]
            text = b"".join(bytes(e.bytes or e.token.encode()) for e in body).decode(
                "utf-8", "replace"
            )
            stopped = bool(entries) and entries[-1].token_id == eot
            records.append(
                Record(
                    id=f"{id_prefix}{start + i}",
                    messages=[Message(role="user", content=text_in)],
                    completion=text,
                    finish_reason="stop" if stopped else "length",
                    logprobs=entries,
                )
            )
    return records
