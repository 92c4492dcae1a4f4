"""OpenAI stored chat completions → imported exchanges.

``client.chat.completions.list(model=…, metadata=…, after=…, limit=…)`` pages through the
completions stored with ``store: true`` (the SDK follows ``has_more``/``after`` itself); each
completion's input comes from ``client.chat.completions.messages.list(completion_id)`` (also
paged), its answer, usage and logprobs (when they were requested) from the completion itself.
The completion id is the record id, so importing again never duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from apidistill.errors import TeacherError
from apidistill.importers.base import ImportedExchange, ImportLoad, LineProblem, collect
from apidistill.importers.chat import openai_assistant_text, openai_messages

__all__ = ["SOURCE", "completion_exchange", "import_stored_completions"]

SOURCE = "openai_stored"


def completion_exchange(
    completion: Mapping[str, Any],
    input_messages: list[Mapping[str, Any]],
    *,
    source: str,
    ref: str,
    line: int,
    item_id: str | None,
    provider: str = "openai",
) -> ImportedExchange:
    """One exchange from a chat completion object and the messages it answered: usage,
    finish reason, version and logprobs (every alternative kept) are read by the harvest's
    own parser (:func:`~apidistill.teachers.openai.parse_openai_body`); the answer text
    also renders tool calls (:mod:`apidistill.importers.chat`)."""
    from apidistill.teachers.openai import parse_openai_body

    model = completion.get("model")
    if not isinstance(model, str) or not model:
        raise LineProblem("the completion names no model")
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    lp = choice.get("logprobs") if isinstance(choice, Mapping) else None
    try:
        parsed, _ = parse_openai_body(
            completion,
            chat=True,
            logprobs_requested=isinstance(lp, Mapping) and bool(lp.get("content")),
            top_k=20,
            provider=provider,
            model=model,
        )
    except TeacherError as exc:
        raise LineProblem(exc.message) from None
    assert isinstance(choice, Mapping)  # parse_openai_body checked it
    meta = {}
    if isinstance(completion.get("metadata"), Mapping) and completion["metadata"]:
        meta["stored_metadata"] = dict(completion["metadata"])
    return ImportedExchange(
        source=source,
        ref=ref,
        line=line,
        item_id=item_id,
        messages=openai_messages(list(input_messages)),
        completion=openai_assistant_text(choice["message"], "choices[0].message"),
        provider=provider,
        model=model,
        finish_reason=parsed.finish_reason,
        logprobs=parsed.logprobs,
        usage=parsed.usage,
        model_version=parsed.model_version,
        metadata=meta,
    )


def _store_message(m: Any) -> dict[str, Any]:
    """A stored input message (``ChatCompletionStoreMessage``) as a request message."""
    d = m.model_dump(mode="json", exclude_none=True) if hasattr(m, "model_dump") else dict(m)
    d.pop("id", None)
    parts = d.pop("content_parts", None)
    if d.get("content") is None and parts:
        d["content"] = parts
    return d


def _listed(
    client: Any,
    model: str | None,
    metadata: dict[str, str] | None,
    after: str | None,
    page_size: int,
) -> Iterator[tuple[int, Any]]:
    import openai

    kw: dict[str, Any] = {"limit": page_size}
    if model:
        kw["model"] = model
    if metadata:
        kw["metadata"] = metadata
    if after:
        kw["after"] = after
    try:
        for n, comp in enumerate(client.chat.completions.list(**kw), start=1):
            msgs = [
                _store_message(m) for m in client.chat.completions.messages.list(comp.id, limit=100)
            ]
            yield n, (comp.model_dump(mode="json"), msgs)
    except openai.APIStatusError as exc:
        raise TeacherError(
            f"listing stored completions failed: HTTP {exc.status_code} {exc.message}",
            status=exc.status_code,
            hint="check the key's project (stored completions are per project) and the filters",
        ) from None
    except openai.APIConnectionError as exc:
        raise TeacherError(
            f"cannot reach the API: {exc}", hint="check the network and base_url"
        ) from None


def import_stored_completions(
    client: Any,
    *,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    after: str | None = None,
    page_size: int = 100,
    skip_invalid: bool = False,
    limit: int | None = None,
    ref: str = "chat.completions.list",
) -> ImportLoad:
    """Every stored completion matching ``model``/``metadata`` (after ``after``)."""

    def build(_: int, value: Any) -> list[ImportedExchange]:
        comp, msgs = value
        try:
            return [
                completion_exchange(
                    comp,
                    msgs,
                    source=SOURCE,
                    ref=comp.get("id", ref),
                    line=0,
                    item_id=comp.get("id"),
                )
            ]
        except LineProblem as exc:
            raise LineProblem(f"stored completion {comp.get('id')!r}: {exc}") from None

    return collect(
        ((0, v) for _, v in _listed(client, model, metadata, after, page_size)),
        build,
        where=ref,
        skip_invalid=skip_invalid,
        limit=limit,
    )
