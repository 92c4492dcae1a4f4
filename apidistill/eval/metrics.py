"""Per-example scorers and aggregate metrics, each with a seeded bootstrap confidence interval.

Everything here is a pure function of strings and arrays: the runner does the I/O, this module
decides what "the same answer" means. Scorers return a float in [0, 1] per example so one
bootstrap serves them all. A migration decision rests on small test splits (100 tickets in the
demo), so a point estimate alone would overstate what was measured: every aggregate carries a
percentile bootstrap interval from ``numpy.random.default_rng(seed)``, reproducible run to run.

ROUGE-L and chrF are implemented here (about 40 lines) rather than pulling ``rouge-score`` or
``sacrebleu``: both are short, well-specified formulas and the libraries bring tokenizers and
downloads the report does not need. chrF follows sacrebleu's sentence-level defaults
(character 1..6-grams, whitespace removed, beta = 2, precision and recall averaged over
orders); ROUGE-L is the F1 of the longest common subsequence of lowercased word tokens.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from apidistill.errors import EvalError

__all__ = [
    "SCORERS",
    "Estimate",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "calibration_ci",
    "canonical_label",
    "chrf",
    "exact_match",
    "expected_calibration_error",
    "fields_match",
    "is_refusal",
    "label_match",
    "mean_ci",
    "normalize",
    "parse_fields",
    "rouge_l",
    "score",
    "sequence_confidence",
    "token_kl_estimates",
    "valid_structure",
]

_WS = re.compile(r"\s+")
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_KV_LINE = re.compile(r"^\s*[\"']?([A-Za-z_][\w .-]*?)[\"']?\s*[:=]\s*(.*?)\s*,?\s*$")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval; ``n`` is the number of examples behind it."""

    value: float
    low: float
    high: float
    n: int


# --------------------------------------------------------------------------- normalization


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form: models differ in trailing newlines and casing
    far more often than in content, and neither should count as disagreement."""
    return _WS.sub(" ", text).strip().casefold()


def _strip_value(value: str) -> str:
    v = normalize(value)
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1].strip()
    return v.rstrip(".").strip()


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def canonical_label(text: str) -> str:
    """A label as compared: normalized, without quotes or trailing punctuation, so
    ``"Billing."`` and ``billing`` are the same class."""
    return _strip_value(text).rstrip("!?;:,.").strip()


def label_match(pred: str, ref: str) -> float:
    return float(canonical_label(pred) == canonical_label(ref))


# --------------------------------------------------------------------------- structured output


def parse_fields(text: str) -> dict[str, str]:
    """Fields of a structured answer: a JSON object, else ``key: value`` lines.

    Small teachers write ``order_id: 123`` lines more reliably than JSON (the demo measured 83%
    vs 59% exact), so both forms are accepted. Keys are normalized (case, spaces → ``_``);
    values are kept as text so ``123`` and ``"123"`` compare equal. Unparseable text gives ``{}``.
    """
    body = text.strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return {_norm_key(k): _json_text(v) for k, v in obj.items()}
    out: dict[str, str] = {}
    for line in body.splitlines():
        m = _KV_LINE.match(line)
        if m and m.group(1).strip():
            out.setdefault(_norm_key(m.group(1)), m.group(2))
    return out


def _norm_key(key: str) -> str:
    return _WS.sub("_", str(key).strip().casefold())


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False)


def fields_match(pred: str, ref: str, fields: Sequence[str]) -> float:
    """1.0 when every listed field is present in both answers and equal after normalization."""
    if not fields:
        raise EvalError(
            "the fields scorer needs the list of fields to compare",
            hint="set eval.fields in the run file, e.g. [order_id, product]",
        )
    p, r = parse_fields(pred), parse_fields(ref)
    for f in fields:
        k = _norm_key(f)
        if k not in p or k not in r or _strip_value(p[k]) != _strip_value(r[k]):
            return 0.0
    return 1.0


def valid_structure(
    text: str, fields: Sequence[str] | None = None, *, json_only: bool = False
) -> bool:
    """Whether an answer parses into fields (JSON object, or ``key: value`` lines unless
    ``json_only``) and has every required field: the share of answers downstream code can use."""
    parsed = parse_fields(text)
    if not parsed:
        return False
    if json_only:
        body = text.strip()
        fence = _FENCE.match(body)
        body = fence.group(1).strip() if fence else body
        try:
            if not isinstance(json.loads(body), dict):
                return False
        except json.JSONDecodeError:
            return False
    return all(_norm_key(f) in parsed for f in fields or ())


# --------------------------------------------------------------------------- free text


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 over lowercased word tokens (two empty strings count as identical)."""
    a, b = normalize(pred).split(), normalize(ref).split()
    if not a and not b:
        return 1.0
    lcs = _lcs_len(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(pred: str, ref: str, *, order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 1]: character n-gram F-beta, precision and recall averaged over
    the orders 1..``order`` that occur in both strings (sacrebleu 2's ``effective order``)."""
    hyp, gold = _WS.sub("", pred), _WS.sub("", ref)
    if not hyp and not gold:
        return 1.0
    precisions, recalls = [], []
    for n in range(1, order + 1):
        h, g = _char_ngrams(hyp, n), _char_ngrams(gold, n)
        if not h or not g:
            continue
        match = sum((h & g).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(g.values()))
    if not precisions:  # one side is empty
        return 0.0
    p, r = float(np.mean(precisions)), float(np.mean(recalls))
    if p == 0.0 and r == 0.0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r)


# --------------------------------------------------------------------------- dispatch

SCORERS: dict[str, Callable[..., float]] = {
    "exact": exact_match,
    "label": label_match,
    "fields": fields_match,
    "rouge_l": rouge_l,
    "chrf": chrf,
}


def score(scorer: str, pred: str, ref: str, fields: Sequence[str] | None = None) -> float:
    """Score one answer against a reference with the named scorer (see :data:`SCORERS`)."""
    fn = SCORERS.get(scorer)
    if fn is None:
        raise EvalError(f"unknown scorer {scorer!r}", hint=f"use one of: {', '.join(SCORERS)}")
    if scorer == "fields":
        return fn(pred, ref, fields or ())
    return fn(pred, ref)


def is_refusal(text: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, text) for p in patterns)


# --------------------------------------------------------------------------- bootstrap


def _rng_indices(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    stat: Callable[[np.ndarray], float] | None = None,
    samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Percentile bootstrap of ``stat`` (default: mean) over examples, resampled with
    replacement ``samples`` times from a generator seeded with ``seed``."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise EvalError("cannot compute a metric over zero examples", hint="check the test split")
    if stat is None:
        draws = arr[_rng_indices(arr.size, samples, seed)].mean(axis=1)
        point = float(arr.mean())
    else:
        idx = _rng_indices(arr.size, samples, seed)
        draws = np.array([stat(arr[row]) for row in idx])
        point = float(stat(arr))
    lo, hi = _interval(draws, alpha)
    return Estimate(point, lo, hi, int(arr.size))


def mean_ci(
    values: Sequence[float] | np.ndarray, *, samples: int = 1000, seed: int = 0
) -> Estimate:
    return bootstrap_ci(values, samples=samples, seed=seed)


def bootstrap_ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    *,
    samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Ratio of sums, Σnum / Σden, bootstrapped over paired examples.

    Serves two metrics: student gold score / teacher gold score on the same items (pairing
    keeps their correlation in the interval), and KL nats per token, where records are the
    resampling unit and token counts the denominators (tokens of one answer are not independent).
    Resamples whose denominator sums to zero are dropped.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape:
        raise EvalError(f"paired metric needs equal lengths, got {num.size} and {den.size}")
    if num.size == 0 or den.sum() == 0:
        raise EvalError(
            "ratio metric has a zero denominator (e.g. the teacher scored 0 on every gold answer)",
            hint="check the gold answers and the scorer",
        )
    idx = _rng_indices(num.size, samples, seed)
    ns, ds = num[idx].sum(axis=1), den[idx].sum(axis=1)
    keep = ds > 0
    draws = ns[keep] / ds[keep]
    lo, hi = _interval(draws, alpha)
    return Estimate(float(num.sum() / den.sum()), lo, hi, int(num.size))


# --------------------------------------------------------------------------- token-level


def token_kl_estimates(
    kl_per_position: Sequence[np.ndarray],
    top1_per_position: Sequence[np.ndarray],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """Mean KL (nats/token) and top-1 agreement over all scored positions of all records,
    with records as the bootstrap unit. Records with no scored position are skipped."""
    kls = [np.asarray(k, dtype=float) for k in kl_per_position]
    tops = [np.asarray(t, dtype=float) for t in top1_per_position]
    if len(kls) != len(tops):
        raise EvalError("KL and top-1 arrays must come from the same records")
    kl_sum = [k.sum() for k in kls if k.size]
    kl_n = [k.size for k in kls if k.size]
    top_sum = [t.sum() for t in tops if t.size]
    top_n = [t.size for t in tops if t.size]
    if not kl_n or not top_n:
        raise EvalError(
            "no token positions to score KL on",
            hint="the test records need teacher logprobs with token ids (harvest.logprobs: true)",
        )
    return (
        bootstrap_ratio_ci(kl_sum, kl_n, samples=samples, seed=seed),
        bootstrap_ratio_ci(top_sum, top_n, samples=samples, seed=seed),
    )


def expected_calibration_error(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[float] | np.ndarray,
    *,
    bins: int = 10,
) -> float:
    """ECE: Σ_b (|b|/n)·|accuracy(b) − mean confidence(b)| over equal-width confidence bins
    (right-closed; confidence 0 falls in the first bin)."""
    conf = np.asarray(confidences, dtype=float)
    acc = np.asarray(correct, dtype=float)
    if conf.shape != acc.shape or conf.size == 0:
        raise EvalError("calibration needs one confidence per scored answer")
    if np.any((conf < 0) | (conf > 1)) or np.any(~np.isfinite(conf)):
        raise EvalError("confidences must lie in [0, 1]")
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(acc[sel].mean() - conf[sel].mean())
    return float(ece)


def calibration_ci(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[float] | np.ndarray,
    *,
    bins: int = 10,
    samples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """ECE with a bootstrap interval over (confidence, correct) pairs."""
    conf = np.asarray(confidences, dtype=float)
    acc = np.asarray(correct, dtype=float)
    point = expected_calibration_error(conf, acc, bins=bins)
    idx = _rng_indices(conf.size, samples, seed)
    draws = np.array([expected_calibration_error(conf[i], acc[i], bins=bins) for i in idx])
    lo, hi = _interval(draws, 0.05)
    return Estimate(point, lo, hi, int(conf.size))


def sequence_confidence(token_logprobs: Sequence[float]) -> float:
    """Probability of a whole answer: exp(Σ token logprobs), the confidence ECE bins by."""
    total = float(sum(token_logprobs))
    return math.exp(total) if total > -745 else 0.0
