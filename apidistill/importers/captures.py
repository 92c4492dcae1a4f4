"""The capture proxy's exchanges → imported exchanges.

The proxy (``apidistill proxy``) stores each captured exchange as a ``CapturedExchange``
(``apidistill/proxy/capture_store.py``, read with ``iter_captures(path)``) with the fields
``id, route, api ("openai"|"anthropic"), model, request, response (non-stream shape),
logprobs (optional), usage, cost_usd, policy_decision_id, sampling, created_at``. This module
depends only on that documented shape, through :func:`capture_exchange` (an object with
those attributes or a mapping with those keys), so the proxy can change how it stores them.

:func:`import_captures` reads them with the proxy's own reader when it is installed; without
it, a JSONL file of records of that shape (one per line) is read directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from apidistill.errors import TeacherError
from apidistill.importers.base import (
    ImportedExchange,
    ImportLoad,
    LineProblem,
    collect,
    jsonl_objects,
)
from apidistill.importers.batch_output import anthropic_exchange
from apidistill.importers.openai_stored import completion_exchange
from apidistill.records import TokenLogprob
from apidistill.teachers.logprobs import normalize_chat_logprobs

__all__ = ["SOURCE", "capture_exchange", "import_captures"]

SOURCE = "proxy_capture"
_FIELDS = (
    "id",
    "route",
    "api",
    "model",
    "request",
    "response",
    "logprobs",
    "usage",
    "cost_usd",
    "policy_decision_id",
    "sampling",
    "created_at",
)


def _as_mapping(capture: Any) -> dict[str, Any]:
    if isinstance(capture, Mapping):
        return dict(capture)
    if hasattr(capture, "model_dump"):
        return capture.model_dump(mode="json")
    return {k: getattr(capture, k, None) for k in _FIELDS}


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    """Kept logprobs: OpenAI's ``{"content": [...]}`` or the list of token entries."""
    if not raw:
        return None
    content = raw.get("content") if isinstance(raw, Mapping) else raw
    try:
        return normalize_chat_logprobs(content, top_k=20).tokens
    except TeacherError as exc:
        raise LineProblem(f"logprobs: {exc.message}") from None


def _cost(raw: Any) -> Decimal | None:
    if raw is None:
        return None
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise LineProblem(f"cost_usd {raw!r} is not a number") from None


def capture_exchange(capture: Any, *, ref: str, line: int = 0) -> ImportedExchange:
    """One captured exchange (the proxy's ``CapturedExchange`` shape) as an import."""
    c = _as_mapping(capture)
    request, response = c.get("request"), c.get("response")
    if not isinstance(request, Mapping) or not isinstance(response, Mapping):
        raise LineProblem("a capture needs 'request' and 'response' objects")
    cid = c.get("id")
    if c.get("api") == "openai":
        if not isinstance(request.get("messages"), list):
            raise LineProblem("the captured OpenAI request has no 'messages'")
        ex = completion_exchange(
            response, request["messages"], source=SOURCE, ref=ref, line=line, item_id=cid
        )
    elif c.get("api") == "anthropic":
        ex = anthropic_exchange(response, request, ref=ref, line=line, cid=cid)
        ex.source = SOURCE
    else:
        raise LineProblem(f"api is {c.get('api')!r}; expected 'openai' or 'anthropic'")
    kept = _logprobs(c.get("logprobs"))
    if kept is not None:
        ex.logprobs = kept
    if isinstance(c.get("model"), str) and c["model"]:
        ex.model = c["model"]  # the model the proxy forwarded to (the teacher of the route)
    ex.cost_usd = _cost(c.get("cost_usd"))
    ex.metadata.update(
        {k: c[k] for k in ("route", "sampling", "created_at") if c.get(k) is not None}
    )
    if c.get("policy_decision_id"):
        ex.metadata["capture_policy_decision_id"] = c["policy_decision_id"]
    return ex


def _proxy_reader() -> Any:
    try:
        from apidistill.proxy.capture_store import iter_captures  # type: ignore[import-not-found]
    except ImportError:
        return None
    return iter_captures


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    reader = _proxy_reader()
    if reader is None:
        yield from jsonl_objects(path)
        return
    yield from enumerate(reader(path), start=1)


def import_captures(
    path: Path | Iterable[Any],
    *,
    skip_invalid: bool = False,
    limit: int | None = None,
    ref: str | None = None,
) -> ImportLoad:
    """Captured exchanges from the proxy's store at ``path`` (or given objects)."""
    if isinstance(path, Path):
        rows: Iterable[tuple[int, Any]] = _rows(path)
        where = ref or str(path)
    else:
        rows = enumerate(path, start=1)
        where = ref or "captures"
    return collect(
        rows,
        lambda line, cap: [capture_exchange(cap, ref=where, line=line)],
        where=where,
        skip_invalid=skip_invalid,
        limit=limit,
    )
