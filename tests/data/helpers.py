"""Record builders shared by the data tests (realistic top-k logprobs from a Zipf-like softmax)."""

from __future__ import annotations

import hashlib

import numpy as np

from apidistill.records import Message, Provenance, Record, TokenLogprob, TopLogprob


def make_logprobs(
    rng: np.random.Generator, t: int, k: int, *, vocab: int = 50_000, with_ids: bool = True
) -> list[TokenLogprob]:
    """Top-k lists from a random softmax over a Zipf-shaped logit profile; sampled at T=1."""
    out = []
    for _ in range(t):
        logits = -1.1 * np.log(np.arange(1, 2001)) + rng.normal(0, 1.5, 2000)
        logits *= rng.uniform(0.5, 3.0)  # confident and flat positions
        lp = logits - np.logaddexp.reduce(logits)
        order = np.argsort(-lp)[:k]
        ids = rng.choice(vocab, size=2000, replace=False)
        top = [
            TopLogprob(
                token_id=int(ids[j]) if with_ids else None,
                token=f"t{ids[j]}é",
                bytes=list(f"t{ids[j]}é".encode()),
                logprob=float(lp[j]),
            )
            for j in order
        ]
        j = int(rng.choice(2000, p=np.exp(lp)))
        sampled = next((x for x in top if x.token == f"t{ids[j]}é"), None)
        if sampled is None:
            sampled = TopLogprob(
                token_id=int(ids[j]) if with_ids else None,
                token=f"t{ids[j]}é",
                bytes=list(f"t{ids[j]}é".encode()),
                logprob=float(lp[j]),
            )
        out.append(TokenLogprob(**sampled.model_dump(), top=top))
    return out


def make_record(
    i: int,
    *,
    label: str | None = None,
    t: int = 0,
    k: int = 0,
    seed: int = 0,
    with_ids: bool = True,
    text: str | None = None,
) -> Record:
    rng = np.random.default_rng(seed * 100_003 + i)
    return Record(
        id=f"r{i}",
        messages=[
            Message(
                role="user",
                content=text or f"prompt {i}: {hashlib.sha256(str(i).encode()).hexdigest()[:24]}",
            )
        ],
        completion=f"answer {i}",
        finish_reason="stop",
        logprobs=make_logprobs(rng, t, k, with_ids=with_ids) if t else None,
        label=label,
        metadata={"i": i},
        provenance=Provenance(provider="openai", model="gpt-x"),
    )
