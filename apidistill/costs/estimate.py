"""Pre-flight estimate of a run: tokens, dollars and time, before anything is sent.

Three dollar figures bracket the bill, each with a definition a user can check:

- ``max``: every input token at the dearest input rate (uncached, or a cache write at
  Anthropic), its input at the bound the budget reserves (the count itself where the
  tokenizer is known, else UTF-8 bytes + template tokens, see :mod:`apidistill.costs.tokens`)
  and answered with ``max_tokens``; this is exactly what the budget reserves
  (:func:`~apidistill.costs.prices.worst_case_cost`), so a run whose max fits the budget
  cannot be stopped by it.
- ``expected``: answers of the expected length (a given mean, the gold answers' mean
  length, or ``max_tokens / 2``, in that order; the method is stated), and the prompt cache
  where the teacher has one (:func:`cache_rule`): the shared prefix, when at least the
  provider's minimum, is missed by the first ``concurrency`` requests (sent before any answer
  exists; at Anthropic each of them writes it at the cache-write rate) and read at the
  cache-read rate by every later one. ``usd_expected_uncached`` is the same without caching,
  so the saving is shown.
- ``min``: a floor: no output at all, and the prefix every request shares (the prototype
  prompt) billed at the cached-input rate after the first request.

Time is the slowest of the configured limits (RPM, TPM) and, when a per-request latency is
known, ``requests × latency / concurrency``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, Field
from rich.table import Table

from apidistill.config import RunConfig
from apidistill.costs.prices import MTOK, ModelPrice, price_for_teacher, worst_case_cost
from apidistill.costs.tokens import TokenCount, TokenCounter
from apidistill.errors import ConfigError
from apidistill.records import Message, TeacherRequest

__all__ = [
    "AnthropicCounts",
    "Estimate",
    "cache_rule",
    "estimate",
    "render_estimate",
    "shared_prefix",
]

_CENT = Decimal("0.01")


@dataclass(frozen=True)
class AnthropicCounts:
    """Input tokens per request (aligned with the requests), the shared prefix's tokens and
    how many calls were made (distinct bodies + the prefix measurement), as Anthropic's
    count_tokens endpoint reported them (:mod:`apidistill.teachers.anthropic_count` asks it;
    the estimate only reads the numbers)."""

    per_request: list[int]
    prefix_tokens: int
    calls: int


class Estimate(BaseModel):
    """What a run will cost and take, with how each number was obtained."""

    provider: str
    model: str
    requests: int
    prompts: int
    input_tokens: int
    input_exact: bool
    input_method: str
    input_tokens_bound: int = 0  # what the budget reserves for input (>= input_tokens)
    input_bound_method: str = ""
    shared_prefix_tokens: int = 0  # per request: tokens of the messages every request shares
    output_tokens_expected: int
    output_tokens_max: int
    output_method: str
    price_source: str | None = None  # None: unpriced (costs unknown, never 0)
    usd_min: Decimal | None = None
    usd_expected: Decimal | None = None
    usd_expected_uncached: Decimal | None = None  # the same, had no prompt cache served
    usd_max: Decimal | None = None
    cached_prefix_tokens: int = 0  # per request: the part of the prefix a cache can serve
    cache_read_tokens: int = 0  # expected, over the run
    cache_write_tokens: int = 0  # expected, over the run (Anthropic)
    cache_method: str = ""
    batch_discount: Decimal | None = None
    batch_usd_expected: Decimal | None = None
    batch_usd_max: Decimal | None = None
    uses_batch_api: bool = False
    # harvest.rescore: the requests that re-score imported answers (part of ``requests``)
    rescore_requests: int = 0
    rescore_usd_expected: Decimal | None = None
    rescore_usd_max: Decimal | None = None
    budget_usd: Decimal
    fits_budget: bool | None = None  # usd_max (of the chosen mode) ≤ budget; None if unpriced
    concurrency: int
    rpm: int | None = None
    tpm: int | None = None
    latency_s: float | None = None
    time_s: float | None = None
    time_bound: str = "unknown"
    notes: list[str] = Field(default_factory=list)


def shared_prefix(requests: Sequence[TeacherRequest]) -> list[Message]:
    """The leading messages identical in every chat request (the prototype prompt)."""
    chats = [r.messages for r in requests if r.messages is not None]
    if not chats or len(chats) != len(requests):
        return []
    prefix: list[Message] = []
    for i, msg in enumerate(chats[0][:-1]):  # the last message is the task input
        if all(len(c) > i + 1 and c[i] == msg for c in chats):
            prefix.append(msg)
        else:
            break
    return prefix


def _expected_output(
    counter: TokenCounter, requests: Sequence[TeacherRequest], mean: float | None
) -> tuple[list[int], str]:
    caps = [r.params.max_tokens for r in requests]
    if mean is not None:
        return [min(round(mean), c) for c in caps], f"given mean of {mean:g} tokens"
    golds = [r.metadata.get("gold") for r in requests]
    lengths = [counter.count_text(g) for g in golds if isinstance(g, str) and g]
    if lengths:
        avg = sum(t.n for t in lengths) / len(lengths)
        how = "exact" if lengths[0].exact else "approximate"
        method = f"mean length of {len(lengths)} gold answers ({avg:.1f} tokens, {how})"
        return [min(round(avg), c) for c in caps], method
    return [c // 2 for c in caps], "max_tokens / 2 (assumed: no gold answers to measure)"


def _usd(price: ModelPrice, inp: int, cached: int, out: int, written: int = 0) -> Decimal:
    return (
        Decimal(inp - cached - written) * price.input_per_mtok
        + Decimal(cached) * price.cache_read_rate
        + Decimal(written) * price.cache_write_rate
        + Decimal(out) * price.output_per_mtok
    ) / MTOK


# Anthropic's minimum cacheable prompt length per model (prompt-caching docs); the first
# matching name prefix wins. An unknown Claude model gets the largest minimum, so a saving is
# only shown where it is sure to happen.
_ANTHROPIC_MIN_CACHEABLE = (
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-sonnet-4-5", 1024),
    ("claude-opus-4-1", 1024),
    ("claude-opus-4", 1024),
    ("claude-sonnet-4", 1024),
    ("claude-3-7-sonnet", 1024),
)
_ANTHROPIC_MIN_UNKNOWN = 4096
# OpenAI: automatic for prompts of 1,024 tokens or more, hits in 128-token steps.
_OPENAI_MIN_CACHEABLE, _OPENAI_CACHE_STEP = 1024, 128


def cache_rule(cfg: RunConfig) -> tuple[int, int, bool] | None:
    """``(minimum prefix tokens, step, writes billed)`` of the teacher's prompt cache, or
    ``None`` when none is assumed: Anthropic with ``cache_control`` marked (writes billed at
    1.25x), OpenAI's own API (automatic, no write charge). Other servers may cache too, but
    nothing says they discount it, so the expected cost does not assume it."""
    from apidistill.costs.tokens import _is_official_openai

    t = cfg.teacher
    if t.marks_prompt_cache:
        name = t.model.lower()
        found = (n for p, n in _ANTHROPIC_MIN_CACHEABLE if name.startswith(p))
        return next(found, _ANTHROPIC_MIN_UNKNOWN), 1, True
    if _is_official_openai(t):
        return _OPENAI_MIN_CACHEABLE, _OPENAI_CACHE_STEP, False
    return None


def _cacheable(prefix_tok: int, rule: tuple[int, int, bool] | None) -> int:
    """Tokens of a ``prefix_tok`` prefix the cache serves (0 below the minimum)."""
    if rule is None or prefix_tok < rule[0]:
        return 0
    minimum, step, _ = rule
    return minimum + (prefix_tok - minimum) // step * step


def _up(x: Decimal | None) -> Decimal | None:
    """Round up to the cent for display: an estimate never reads lower than it is."""
    return None if x is None else x.quantize(_CENT, rounding="ROUND_CEILING")


def _time(
    n: int, tokens: int, rpm: int | None, tpm: int | None, conc: int, latency_s: float | None
) -> tuple[float | None, str]:
    bounds: dict[str, float] = {}
    if rpm:
        bounds[f"RPM {rpm}"] = n / rpm * 60
    if tpm:
        bounds[f"TPM {tpm}"] = tokens / tpm * 60
    if latency_s is not None:
        bounds[f"concurrency {conc} × {latency_s:g} s/request"] = n * latency_s / conc
    if not bounds:
        return None, "unknown (no rpm/tpm set and no latency given)"
    which = max(bounds, key=lambda k: bounds[k])
    return bounds[which], which


def _check_assumptions(output_tokens: float | None, latency_s: float | None) -> None:
    """A negative (or NaN/infinite) assumption would print a negative or meaningless cost."""
    if output_tokens is not None and not (math.isfinite(output_tokens) and output_tokens >= 0):
        raise ConfigError(
            f"expected output tokens must be a number >= 0, got {output_tokens!r}",
            key="--output-tokens",
            hint="give the mean answer length in tokens, or leave it out to measure it",
        )
    if latency_s is not None and not (math.isfinite(latency_s) and latency_s > 0):
        raise ConfigError(
            f"latency must be a number of seconds > 0, got {latency_s!r}", key="--latency"
        )


def estimate(
    cfg: RunConfig,
    requests: Sequence[TeacherRequest],
    *,
    expected_output_tokens: float | None = None,
    latency_s: float | None = None,
    anthropic_counts: AnthropicCounts | None = None,
    rescore: Sequence[TeacherRequest] = (),
) -> Estimate:
    """The estimate for sending ``requests`` to ``cfg.teacher``; sends nothing itself.

    ``anthropic_counts``: counts from Anthropic's count_tokens endpoint
    (:mod:`apidistill.teachers.anthropic_count`), used instead of characters / 4.
    ``rescore``: the part of ``requests`` that re-scores imported answers
    (``harvest.rescore``); its own cost is reported beside the total."""
    est = _estimate(cfg, requests, expected_output_tokens, latency_s, anthropic_counts)
    if rescore:
        part = _estimate(cfg, rescore, expected_output_tokens, latency_s, None)
        est.rescore_requests = part.requests
        est.rescore_usd_expected, est.rescore_usd_max = part.usd_expected, part.usd_max
    return est


def _estimate(
    cfg: RunConfig,
    requests: Sequence[TeacherRequest],
    expected_output_tokens: float | None,
    latency_s: float | None,
    anthropic_counts: AnthropicCounts | None,
) -> Estimate:
    _check_assumptions(expected_output_tokens, latency_s)
    teacher, harvest = cfg.teacher, cfg.harvest
    counter = TokenCounter(teacher)
    counts = counter.count_many(list(requests)) if requests else []
    bounds = counter.bound_many(list(requests)) if requests else []
    if anthropic_counts is not None:
        counts = [
            TokenCount(n, True, "Anthropic count_tokens") for n in anthropic_counts.per_request
        ]
        # the count is Anthropic's estimate, no bound: the reservation stays the byte bound,
        # raised to the count should one exceed it
        bounds = [
            b if b.n >= c.n else TokenCount(c.n, False, "bound: Anthropic count_tokens")
            for b, c in zip(bounds, counts, strict=True)
        ]
    input_tokens = sum(c.n for c in counts)
    input_bound = max(sum(b.n for b in bounds), input_tokens)
    exact = all(c.exact for c in counts) if counts else True
    methods = sorted({c.method for c in counts}) or ["no requests"]
    prefix = shared_prefix(requests)
    prefix_tok = counter.prefix_tokens(prefix, requests[0]) if prefix else 0
    if prefix and anthropic_counts is not None:
        prefix_tok = anthropic_counts.prefix_tokens
    outs, out_method = _expected_output(counter, requests, expected_output_tokens)
    out_expected, out_max = sum(outs), sum(r.params.max_tokens for r in requests)
    notes: list[str] = []

    price: ModelPrice | None
    try:
        price = price_for_teacher(teacher)
    except ConfigError as exc:
        price = None
        notes.append(f"the run will refuse to start: {exc.message} ({exc.hint})")
    if price is None and teacher.allow_unpriced:
        notes.append("teacher.allow_unpriced: costs are recorded as unknown, not as 0")

    est = Estimate(
        provider=teacher.provider,
        model=teacher.model,
        requests=len(requests),
        prompts=len({r.prompt_id or r.cache_key("", "") for r in requests}),
        input_tokens=input_tokens,
        input_exact=exact,
        input_method="; ".join(methods),
        input_tokens_bound=input_bound,
        input_bound_method="; ".join(sorted({b.method for b in bounds})),
        shared_prefix_tokens=prefix_tok,
        output_tokens_expected=out_expected,
        output_tokens_max=out_max,
        output_method=out_method,
        budget_usd=cfg.budget.usd,
        concurrency=harvest.concurrency,
        rpm=harvest.rpm,
        tpm=harvest.tpm,
        latency_s=latency_s,
        uses_batch_api=harvest.use_batch_api,
        notes=notes,
    )
    if price is not None:
        cached_floor = prefix_tok * max(0, len(requests) - 1)
        est.price_source = price.source
        est.usd_min = _usd(price, input_tokens, cached_floor, 0)
        _expect_cache(est, cfg, prefix_tok)
        est.usd_expected = _usd(
            price, input_tokens, est.cache_read_tokens, out_expected, est.cache_write_tokens
        )
        est.usd_expected_uncached = _usd(price, input_tokens, 0, out_expected)
        est.usd_max = sum(
            (
                worst_case_cost(price, b.n, r.params.max_tokens) or Decimal(0)
                for b, r in zip(bounds, requests, strict=True)
            ),
            Decimal(0),
        )
        if input_bound > sum(b.n for b in bounds):  # counts above a bound: charge the counts
            est.usd_max = _usd(price, input_bound, 0, out_max)
        if price.batch_discount > 0 and _has_batch_api(cfg):
            keep = Decimal(1) - price.batch_discount
            est.batch_discount = price.batch_discount
            est.batch_usd_expected = est.usd_expected * keep
            est.batch_usd_max = est.usd_max * keep
        chosen_max = (
            est.batch_usd_max if harvest.use_batch_api and est.batch_usd_max else est.usd_max
        )
        est.fits_budget = chosen_max <= cfg.budget.usd
        if not est.fits_budget:
            est.notes.append(
                f"the worst case (${_up(chosen_max)}) exceeds the budget (${cfg.budget.usd}): the "
                "run stops when reservations reach it; lower harvest.max_tokens or raise budget.usd"
            )
    if not exact:
        est.notes.append(f"input tokens are approximate ({est.input_method})")
    est.time_s, est.time_bound = _time(
        len(requests),
        input_tokens + out_expected,
        harvest.rpm,
        harvest.tpm,
        harvest.concurrency,
        latency_s,
    )
    if harvest.use_batch_api:
        est.notes.append("Batch API: results can take up to the provider's batch window (24 h)")
    return est


def _expect_cache(est: Estimate, cfg: RunConfig, prefix_tok: int) -> None:
    """Fill the expected prompt-cache traffic (module docstring) and say how it was assumed."""
    rule = cache_rule(cfg)
    if not prefix_tok:
        return
    if rule is None:
        est.cache_method = "none assumed (the teacher has no prompt-cache discount known here)"
        return
    minimum, _, writes = rule
    cacheable = _cacheable(prefix_tok, rule)
    if not cacheable:
        est.cache_method = (
            f"none: the {prefix_tok:,}-token shared prefix is under the {minimum:,}-token minimum"
        )
        return
    misses = min(cfg.harvest.concurrency, est.requests)
    est.cached_prefix_tokens = cacheable
    est.cache_read_tokens = cacheable * (est.requests - misses)
    if writes:
        est.cache_write_tokens = cacheable * misses
    who = "Anthropic cache_control" if writes else "OpenAI automatic caching"
    est.cache_method = (
        f"{who}: {cacheable:,} prefix tokens read by {est.requests - misses:,} requests"
        + (f", written by the first {misses:,}" if writes else f"; the first {misses:,} miss")
        + f" (concurrency {cfg.harvest.concurrency})"
        + ("" if est.input_exact else "; prefix size approximate")
    )


def _has_batch_api(cfg: RunConfig) -> bool:
    """Only OpenAI's and Anthropic's own endpoints offer a Batch API (teachers/batch.py)."""
    t = cfg.teacher
    if t.provider not in ("openai", "anthropic") or t.launch is not None:
        return False
    return not t.base_url or any(h in t.base_url for h in ("api.openai.com", "api.anthropic.com"))


def _money(x: Decimal | None) -> str:
    return "unknown" if x is None else f"${_up(x)}"


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def render_estimate(est: Estimate) -> Table:
    """The estimate as a two-column rich table (what, how much and how it was counted)."""
    t = Table(title=f"Estimate: {est.provider} / {est.model} (nothing sent)", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("requests", f"{est.requests:,} ({est.prompts:,} prompts)")
    t.add_row(
        "input tokens",
        f"{est.input_tokens:,} ({'exact' if est.input_exact else 'approximate'}: {est.input_method})",
    )
    if est.input_tokens_bound > est.input_tokens:
        t.add_row(
            "input worst case",
            f"{est.input_tokens_bound:,} (what the budget reserves: {est.input_bound_method})",
        )
    if est.shared_prefix_tokens:
        t.add_row("shared prefix", f"{est.shared_prefix_tokens:,} tokens per request")
    t.add_row("output tokens", f"{est.output_tokens_expected:,} expected ({est.output_method})")
    t.add_row("output worst case", f"{est.output_tokens_max:,} (max_tokens on every request)")
    t.add_row("price", est.price_source or "unpriced")
    if est.cache_method:
        saving = ""
        if est.usd_expected is not None and est.usd_expected_uncached is not None:
            saved = est.usd_expected_uncached - est.usd_expected
            saving = (
                f"expected {_money(est.usd_expected)} with caching vs "
                f"{_money(est.usd_expected_uncached)} without (saves {_money(saved)}); "
            )
        t.add_row("prompt cache", saving + est.cache_method)
    t.add_row(
        "cost online",
        f"min {_money(est.usd_min)} · expected {_money(est.usd_expected)} · "
        f"max {_money(est.usd_max)}",
    )
    if est.rescore_requests:
        t.add_row(
            "re-score imported",
            f"{est.rescore_requests:,} requests (harvest.rescore, included above): expected "
            f"{_money(est.rescore_usd_expected)} · max {_money(est.rescore_usd_max)}",
        )
    if est.batch_discount is not None:
        t.add_row(
            "cost Batch API",
            f"expected {_money(est.batch_usd_expected)} · max {_money(est.batch_usd_max)} "
            f"({est.batch_discount * 100:.0f}% off)"
            + (" ← configured" if est.uses_batch_api else ""),
        )
    fits = {True: "[green]fits[/]", False: "[red]exceeds[/]", None: "unknown"}[est.fits_budget]
    t.add_row("budget", f"${est.budget_usd} ({fits} the worst case)")
    if est.time_s is None:
        t.add_row("time", est.time_bound)
    else:
        t.add_row("time", f"{_duration(est.time_s)} (bound: {est.time_bound})")
    for note in est.notes:
        t.add_row("note", note)
    return t
