"""Choosing the next token for every row of a batch, and the logprobs reported with it.

Reported logprobs are ``log_softmax`` of the model's raw logits: the unprocessed
distribution, before temperature, top-p or top-k. That is what distillation needs (the
teacher's real distribution, whatever sampling settings produced the text) and what
``--logprobs-mode raw_logprobs`` gives in vLLM. Sampling itself uses the processed
distribution.

Each row has its own ``torch.Generator``: a seeded request draws the same tokens whatever
else shares its batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

__all__ = ["GREEDY_BELOW", "RowSampler", "SamplingParams", "StepChoice", "choose_tokens"]

# A temperature this small is greedy decoding in all but name (vLLM's _SAMPLING_EPS): dividing
# the logits by it overflows float32 to inf (inf - inf = nan in softmax) from about 1e-37 on,
# and one such row used to fail the whole batch it was decoded in.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence decoding settings (already validated by the caller)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


@dataclass
class RowSampler:
    """Sampling state of one sequence: its params and its random generator."""

    params: SamplingParams
    sample_index: int = 0
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.params.seed
        base = secrets.randbits(63) if seed is None else (seed * 1_000_003 + self.sample_index)
        self.generator = torch.Generator().manual_seed(base % (2**63))

    def sample(self, logits: torch.Tensor) -> int:
        """One token from a 1-D logits row, after temperature, top-k and top-p.

        Total over every accepted setting: whatever the temperature and top-p, the most
        likely token always keeps its probability, so the draw never sees an all-zero or
        non-finite distribution (a tiny top-p rounds to 0.0 in float32 and used to drop
        every token)."""
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits))
        scores = logits.float() / p.temperature
        if p.top_k is not None and 0 < p.top_k < scores.numel():
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if p.top_p is not None and p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # Keep the smallest set whose mass reaches top_p (always at least one token).
            drop = (torch.cumsum(sorted_p, 0) - sorted_p) >= p.top_p
            drop[0] = False
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
            return int(torch.argmax(logits))  # degenerate logits (all -inf, nan): be greedy
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class StepChoice:
    """What one row chose at one step: the token, its logprob and the top alternatives."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def choose_tokens(logits: torch.Tensor, rows: list[RowSampler]) -> list[StepChoice]:
    """Pick a token for every row of ``logits`` (B, V) and attach the requested logprobs."""
    need_lp = [r.params.logprobs or r.params.top_logprobs > 0 for r in rows]
    greedy = [r.params.greedy for r in rows]
    picks: list[int] = [0] * len(rows)
    if any(greedy):
        argmax = torch.argmax(logits, dim=-1).tolist()
        for i, g in enumerate(greedy):
            if g:
                picks[i] = argmax[i]
    for i, row in enumerate(rows):
        if not greedy[i]:
            picks[i] = row.sample(logits[i])
    choices = [StepChoice(t) for t in picks]
    if not any(need_lp):
        return choices
    idx = [i for i, n in enumerate(need_lp) if n]
    lp = torch.log_softmax(logits[idx].float(), dim=-1)
    chosen = lp.gather(1, torch.tensor([picks[i] for i in idx])[:, None])[:, 0].tolist()
    k = max(rows[i].params.top_logprobs for i in idx)
    top_vals: list[list[float]] = []
    top_ids: list[list[int]] = []
    if k > 0:
        vals, ids = torch.topk(lp, k, dim=-1)
        top_vals, top_ids = vals.tolist(), ids.tolist()
    for j, i in enumerate(idx):
        choices[i].logprob = chosen[j]
        want = rows[i].params.top_logprobs
        if want:
            choices[i].top = list(zip(top_ids[j][:want], top_vals[j][:want], strict=True))
    return choices
