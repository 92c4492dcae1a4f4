"""OpenAI Batch output and Anthropic Message Batch results → imported exchanges.

Neither output file repeats the request, so each needs the batch's input file to know what
was asked, joined on ``custom_id``:

- OpenAI input line ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body": {"model", "messages", ...}}``; output line ``{"id", "custom_id", "response":
  {"status_code", "request_id", "body": <chat completion>} | null, "error": {...} | null}``.
- Anthropic request ``{"custom_id", "params": {"model", "max_tokens", "system"?, "messages"}}``
  (the JSONL of the ``requests`` list sent to ``messages.batches.create``); result line
  ``{"custom_id", "result": {"type": "succeeded", "message": <message>} | {"type":
  "errored", "error": …} | {"type": "canceled"} | {"type": "expired"}}``.

A request the provider answered with an error (or that was canceled/expired) is counted in
``failed`` with its reason, not treated as a bad line: it is the data, not the file, that
lacks an answer.
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
from apidistill.importers.chat import anthropic_messages, anthropic_text
from apidistill.importers.openai_stored import completion_exchange

__all__ = ["anthropic_exchange", "import_anthropic_batch", "import_openai_batch"]


def _requests(path: Path, key: str) -> dict[str, tuple[int, Mapping[str, Any]]]:
    """``custom_id → (line, body)`` of a batch input file; every line must be usable."""
    out: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for line, raw in jsonl_objects(path):
        problem = None
        if isinstance(raw, LineProblem):
            problem = str(raw)
        elif not isinstance(raw, Mapping) or not isinstance(raw.get("custom_id"), str):
            problem = "expected an object with a 'custom_id'"
        elif not isinstance(raw.get(key), Mapping):
            problem = f"no {key!r} object (is this the batch's input file?)"
        elif raw["custom_id"] in out:
            problem = f"custom_id {raw['custom_id']!r} repeats line {out[raw['custom_id']][0]}"
        if problem:
            raise DataError(
                problem, file=str(path), line=line, hint="pass the batch's own input file"
            )
        out[raw["custom_id"]] = (line, raw[key])
    return out


def _need_requests(requests: Path | None, what: str) -> Path:
    if requests is None:
        raise DataError(
            f"{what} do not contain the requests they answer",
            hint="pass the batch's input file too (--requests input.jsonl)",
        )
    return requests


def _asked(reqs: dict[str, Any], cid: Any, requests: Path) -> Mapping[str, Any]:
    if not isinstance(cid, str):
        raise LineProblem("no 'custom_id'")
    if cid not in reqs:
        raise LineProblem(f"custom_id {cid!r} is not in the input file {requests}")
    return reqs[cid][1]


def import_openai_batch(
    output: Path, *, requests: Path | None, skip_invalid: bool = False, limit: int | None = None
) -> ImportLoad:
    """Answered requests of an OpenAI Batch (chat completions endpoint)."""
    requests = _need_requests(requests, "OpenAI Batch output files")
    reqs = _requests(requests, "body")
    load = ImportLoad()

    def build(line: int, raw: Any) -> list[ImportedExchange]:
        if not isinstance(raw, Mapping):
            raise LineProblem("expected a Batch output object")
        body = _asked(reqs, raw.get("custom_id"), requests)
        resp, err = raw.get("response"), raw.get("error")
        status = resp.get("status_code") if isinstance(resp, Mapping) else None
        if err or status != 200:
            reason = (err or {}).get("message") if isinstance(err, Mapping) else None
            if reason is None and isinstance(resp, Mapping):
                berr = (
                    (resp.get("body") or {}).get("error")
                    if isinstance(resp.get("body"), Mapping)
                    else None
                )
                reason = f"HTTP {status}" + (
                    f": {berr.get('message')}" if isinstance(berr, Mapping) else ""
                )
            load.failed += 1
            load.note(f"{output}:{line}: request {raw.get('custom_id')!r} failed ({reason})")
            return []
        completion = resp.get("body")
        if not isinstance(completion, Mapping):
            raise LineProblem("response.body is not a chat completion object")
        if not isinstance(body.get("messages"), list):
            raise LineProblem(
                "its request has no 'messages' (only /v1/chat/completions batches are read)"
            )
        ex = completion_exchange(
            completion,
            body["messages"],
            source="openai_batch",
            ref=str(output),
            line=line,
            item_id=raw["custom_id"],
        )
        ex.metadata["batch_request_id"] = resp.get("request_id")
        ex.cost_usd = None  # billed at the Batch discount by OpenAI; not re-priced here
        return [ex]

    return collect(
        jsonl_objects(output),
        build,
        where=str(output),
        skip_invalid=skip_invalid,
        load=load,
        limit=limit,
    )


def anthropic_exchange(
    message: Mapping[str, Any], params: Mapping[str, Any], *, ref: str, line: int, cid: str
) -> ImportedExchange:
    """One exchange from an Anthropic ``message`` and the request ``params`` it answered
    (usage and stop reason by the harvest's own parser)."""
    from apidistill.teachers.anthropic import parse_anthropic_body

    model = message.get("model") or params.get("model")
    if not isinstance(model, str) or not model:
        raise LineProblem("neither the message nor its request names a model")
    try:
        parsed = parse_anthropic_body(message, model=model)
    except TeacherError as exc:
        raise LineProblem(f"result.message: {exc.message}") from None
    return ImportedExchange(
        source="anthropic_batch",
        ref=ref,
        line=line,
        item_id=cid,
        messages=anthropic_messages(params),
        completion=anthropic_text(message.get("content"), "result.message.content"),
        provider="anthropic",
        model=model,
        finish_reason=parsed.finish_reason,
        usage=parsed.usage,
        model_version=parsed.model_version,
    )


def import_anthropic_batch(
    results: Path, *, requests: Path | None, skip_invalid: bool = False, limit: int | None = None
) -> ImportLoad:
    """Succeeded requests of an Anthropic Message Batch."""
    requests = _need_requests(requests, "Anthropic batch results")
    reqs = _requests(requests, "params")
    load = ImportLoad()

    def build(line: int, raw: Any) -> list[ImportedExchange]:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("result"), Mapping):
            raise LineProblem('expected {"custom_id", "result": {...}}')
        params = _asked(reqs, raw.get("custom_id"), requests)
        result = raw["result"]
        kind = result.get("type")
        if kind != "succeeded":
            if kind not in ("errored", "canceled", "expired"):
                raise LineProblem(f"result.type {kind!r} is not one Anthropic documents")
            err = result.get("error")
            inner = err.get("error") if isinstance(err, Mapping) else None
            why = inner.get("message") if isinstance(inner, Mapping) else kind
            load.failed += 1
            load.note(f"{results}:{line}: request {raw['custom_id']!r} {kind} ({why})")
            return []
        message = result.get("message")
        if not isinstance(message, Mapping):
            raise LineProblem("result.message is not an object")
        return [
            anthropic_exchange(message, params, ref=str(results), line=line, cid=raw["custom_id"])
        ]

    return collect(
        jsonl_objects(results),
        build,
        where=str(results),
        skip_invalid=skip_invalid,
        load=load,
        limit=limit,
    )
