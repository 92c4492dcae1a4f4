"""The generic chat JSONL (documented in docs/import.md) → imported exchanges.

One object per line::

    {"messages": [{"role": "user", "content": "…"}, …], "completion": "…"?,
     "metadata": {…}?, "id": "…"?, "label": "…"?, "gold": "…"?}

Without ``completion`` the last message must be the assistant's answer (it becomes the
completion; the turns before it the input). ``messages`` follow OpenAI's chat format
(tool calls and tool results are rendered as in :mod:`apidistill.importers.chat`). Who wrote
the answers is given once for the whole file (``--provider``/``--model``), because their
terms decide whether they may train a student.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apidistill.errors import DataError
from apidistill.importers.base import (
    ImportedExchange,
    ImportLoad,
    LineProblem,
    collect,
    jsonl_objects,
)
from apidistill.importers.chat import openai_messages

__all__ = ["SOURCE", "import_generic_chat"]

SOURCE = "chat"
_KEYS = {"messages", "completion", "metadata", "id", "label", "gold"}


def _exchange(
    line: int, raw: Any, *, ref: str, provider: str, model: str
) -> list[ImportedExchange]:
    if not isinstance(raw, Mapping):
        raise LineProblem("expected an object with 'messages'")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise LineProblem(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}"
        )
    msgs = openai_messages(raw.get("messages"))
    completion = raw.get("completion")
    if completion is None:
        if msgs[-1].role != "assistant":
            raise LineProblem("no 'completion' and the last message is not the assistant's answer")
        completion, msgs = msgs[-1].content, msgs[:-1]
    if not isinstance(completion, str):
        raise LineProblem("'completion' must be text")
    if not msgs:
        raise LineProblem("no input messages before the answer")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise LineProblem("'metadata' must be an object")
    rid = raw.get("id")
    if rid is not None and (not isinstance(rid, str | int) or isinstance(rid, bool)):
        raise LineProblem("'id' must be text or an integer")
    extra = {k: raw[k] for k in ("label", "gold") if raw.get(k) is not None}
    return [
        ImportedExchange(
            source=SOURCE,
            ref=ref,
            line=line,
            item_id=None if rid is None else str(rid),
            messages=msgs,
            completion=completion,
            provider=provider,
            model=model,
            finish_reason="stop",
            metadata={**dict(meta), **extra},
        )
    ]


def import_generic_chat(
    path: Path, *, provider: str, model: str, skip_invalid: bool = False, limit: int | None = None
) -> ImportLoad:
    if not provider or not model:
        raise DataError(
            "a generic chat file does not say who wrote its answers",
            file=str(path),
            hint="pass --provider and --model (the model whose terms govern the answers)",
        )
    return collect(
        jsonl_objects(path),
        lambda line, raw: _exchange(line, raw, ref=str(path), provider=provider, model=model),
        where=str(path),
        skip_invalid=skip_invalid,
        limit=limit,
    )
