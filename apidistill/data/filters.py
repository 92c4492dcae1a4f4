"""Drop records a student should not learn from, counting every drop by its reason.

A filtered dataset is only trustworthy if the user can see what was removed and why, so each
record is dropped for the *first* failing check (in the order of :data:`REASONS`) and that
reason is counted; the dataset card prints the counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apidistill.config import FilterConfig
from apidistill.errors import ConfigError
from apidistill.records import Record

__all__ = ["REASONS", "FilterResult", "Validator", "apply_filters", "compile_checks"]

Validator = Callable[[Record], str | None]

# Check order: the first failing check names the drop.
REASONS = (
    "error",
    "truncated",
    "empty",
    "overlong",
    "refusal",
    "regex",
    "json_schema",
    "label_set",
    "validator",
)
_ERROR_FINISH = {"error", "failed"}
_REFUSAL_FINISH = {"content_filter", "refusal"}
_TRUNCATED_FINISH = {"length", "max_tokens", "model_length"}
_EXAMPLES = 5


@dataclass
class FilterResult:
    kept: list[Record]
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    # A few (record id, detail) per reason, so a report can show what a drop looked like.
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())


Check = Callable[[Record], str | None]  # None = passes; text = why it fails


def _compile(pattern: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"invalid regular expression {pattern!r}: {exc}",
            key=f"dataset.filters.{key}",
            hint="fix the pattern (Python `re` syntax)",
        ) from None


def _json_checker(schema: dict[str, Any]) -> Check:
    try:
        import jsonschema
    except ImportError:
        raise ConfigError(
            "dataset.filters.json_schema needs the 'jsonschema' package",
            key="dataset.filters.json_schema",
            hint="pip install jsonschema, or remove json_schema from the run file",
        ) from None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"not a valid JSON schema: {exc.message}", key="dataset.filters.json_schema"
        ) from None
    validator = cls(schema)

    def check(rec: Record) -> str | None:
        text = _strip_fence(rec.completion)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"output is not JSON ({exc.msg})"
        err = jsonschema.exceptions.best_match(validator.iter_errors(value))
        return None if err is None else f"{err.json_path}: {err.message}"[:200]

    return check


def _strip_fence(text: str) -> str:
    """Models often wrap JSON in a Markdown code fence; the content is what counts."""
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0]
    return s.strip()


def compile_checks(
    cfg: FilterConfig, validator: Validator | None = None
) -> list[tuple[str, Check]]:
    """The enabled checks in order, with patterns compiled once (bad patterns fail here)."""
    checks: list[tuple[str, Check]] = [("error", _error)]
    if cfg.drop_truncated:
        checks.append(
            (
                "truncated",
                lambda r: (
                    "finish_reason=" + str(r.finish_reason)
                    if r.finish_reason in _TRUNCATED_FINISH
                    else None
                ),
            )
        )
    if cfg.drop_empty:
        checks.append(("empty", lambda r: "empty output" if not r.completion.strip() else None))
    if cfg.max_output_chars is not None:
        limit = cfg.max_output_chars
        checks.append(
            (
                "overlong",
                lambda r: (
                    f"{len(r.completion)} chars > {limit}" if len(r.completion) > limit else None
                ),
            )
        )
    refusals = [_compile(p, f"refusal_patterns[{i}]") for i, p in enumerate(cfg.refusal_patterns)]
    checks.append(("refusal", lambda r: _refusal(r, refusals)))
    if cfg.regex is not None:
        rx = _compile(cfg.regex, "regex")
        checks.append(
            (
                "regex",
                lambda r: None if rx.fullmatch(r.completion.strip()) else "output does not match",
            )
        )
    if cfg.json_schema is not None:
        checks.append(("json_schema", _json_checker(cfg.json_schema)))
    if cfg.label_set is not None:
        allowed = set(cfg.label_set)
        checks.append(
            (
                "label_set",
                lambda r: (
                    None
                    if r.completion.strip() in allowed
                    else f"{r.completion.strip()[:40]!r} not in the label set"
                ),
            )
        )
    if validator is not None:
        checks.append(("validator", validator))
    return checks


def _error(rec: Record) -> str | None:
    if rec.finish_reason in _ERROR_FINISH:
        return f"finish_reason={rec.finish_reason}"
    err = rec.metadata.get("error")
    return f"error: {str(err)[:80]}" if err else None


def _refusal(rec: Record, patterns: list[re.Pattern[str]]) -> str | None:
    if rec.finish_reason in _REFUSAL_FINISH:
        return f"finish_reason={rec.finish_reason}"
    for rx in patterns:
        m = rx.search(rec.completion)
        if m:
            return f"matches {rx.pattern!r}: {m.group(0)[:40]!r}"
    return None


def apply_filters(
    records: Iterable[Record], cfg: FilterConfig, validator: Validator | None = None
) -> FilterResult:
    """Keep the records that pass every enabled check; count the rest by first reason.

    ``validator`` is the user's own check: it returns None to keep a record, or a short
    reason to drop it (counted under ``"validator"``).
    """
    checks = compile_checks(cfg, validator)
    result = FilterResult(kept=[])
    for rec in records:
        for reason, check in checks:
            detail = check(rec)
            if detail is not None:
                result.dropped_by_reason[reason] = result.dropped_by_reason.get(reason, 0) + 1
                ex = result.examples.setdefault(reason, [])
                if len(ex) < _EXAMPLES:
                    ex.append((rec.id, detail))
                break
        else:
            result.kept.append(rec)
    return result
