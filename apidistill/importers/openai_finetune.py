"""OpenAI fine-tuning JSONL (chat format) → imported exchanges.

Each line is ``{"messages": [...], "tools"?: [...], "functions"?: [...], "parallel_tool_calls"?}``.
OpenAI trains on every assistant turn unless it carries ``"weight": 0``; so does this importer:
one exchange per assistant turn with weight 1 (or no weight), its input being every turn
before it (earlier assistant turns, weighted or not, are context). The line's ``tools`` are
kept in the record's ``metadata["tools"]``.

A file id (``file-…``) is fetched through the Files API (``client.files.content``) and kept
as ``<dest>/<file id>.jsonl``, so a re-import reads the copy instead of downloading again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apidistill.errors import DataError, TeacherError
from apidistill.importers.base import (
    ImportedExchange,
    ImportLoad,
    LineProblem,
    collect,
    jsonl_objects,
)
from apidistill.importers.chat import openai_assistant_text, openai_messages

__all__ = ["SOURCE", "fetch_openai_file", "import_finetune_file", "is_file_id"]

SOURCE = "openai_finetune"


def is_file_id(value: str) -> bool:
    """``file-…`` with no path separator: an OpenAI Files API id, not a local path."""
    return value.startswith("file-") and "/" not in value and not Path(value).exists()


def fetch_openai_file(client: Any, file_id: str, dest: Path) -> Path:
    """Download ``file_id`` through ``client.files.content`` into ``dest`` (once)."""
    path = dest / f"{file_id}.jsonl"
    if path.is_file():
        return path
    import openai

    try:
        data = client.files.content(file_id).content
    except openai.APIStatusError as exc:
        raise TeacherError(
            f"the Files API refused {file_id}: HTTP {exc.status_code} {exc.message}",
            status=exc.status_code,
            hint="check the file id (`client.files.list()`) and that the key's project owns it",
        ) from None
    except openai.APIConnectionError as exc:
        raise TeacherError(
            f"cannot reach the Files API for {file_id}: {exc}",
            hint="check the network and base_url",
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _weight(msg: Mapping[str, Any], where: str) -> int:
    w = msg.get("weight", 1)
    if w not in (0, 1) or isinstance(w, bool):
        raise LineProblem(f"{where}.weight must be 0 or 1, got {w!r}")
    return int(w)


def _exchanges(
    line: int, raw: Any, *, ref: str, provider: str, model: str
) -> list[ImportedExchange]:
    if not isinstance(raw, Mapping):
        raise LineProblem("expected an object with 'messages'")
    msgs = raw.get("messages")
    if not isinstance(msgs, list) or not msgs:
        if "prompt" in raw and "completion" in raw:
            raise LineProblem(
                "prompt/completion lines are the legacy format; this importer reads the chat "
                'format ({"messages": [...]})'
            )
        raise LineProblem("'messages' must be a non-empty list")
    converted = openai_messages(msgs)
    meta: dict[str, Any] = {}
    for key in ("tools", "functions", "parallel_tool_calls"):
        if key in raw:
            meta[key] = raw[key]
    out = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, Mapping) or msg.get("role") != "assistant":
            continue
        if not _weight(msg, f"messages[{i}]"):
            continue
        if i == 0:
            raise LineProblem("messages[0] is an assistant turn; it has no input to answer")
        text = openai_assistant_text(msg, f"messages[{i}]")
        turn = sum(1 for m in msgs[:i] if isinstance(m, Mapping) and m.get("role") == "assistant")
        out.append(
            ImportedExchange(
                source=SOURCE,
                ref=ref,
                line=line,
                messages=converted[:i],
                completion=text,
                provider=provider,
                model=model,
                finish_reason="tool_calls" if msg.get("tool_calls") else "stop",
                metadata={**meta, **({"turn": turn} if turn else {})},
            )
        )
    if not out:
        raise LineProblem("no assistant turn to learn from (every one has weight 0, or none)")
    return out


def import_finetune_file(
    path: Path,
    *,
    model: str,
    provider: str = "openai",
    ref: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> ImportLoad:
    """Every trained assistant turn of a fine-tuning file. ``model`` names the model whose
    terms govern the answers (usually the fine-tune itself: ``ft:gpt-4.1-mini:…``)."""
    if not model:
        raise DataError(
            "a fine-tuning file does not say which model wrote its answers",
            file=str(path),
            hint="pass --model (e.g. the fine-tune, ft:gpt-4.1-mini:org::id)",
        )
    ref = ref or str(path)
    return collect(
        jsonl_objects(path),
        lambda line, raw: _exchanges(line, raw, ref=ref, provider=provider, model=model),
        where=str(path),
        skip_invalid=skip_invalid,
        limit=limit,
    )
