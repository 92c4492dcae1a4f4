"""Streamed chunk bodies (apidistill/serve/openai_schema.py): the OpenAI SDK types chat chunks
by ``object: chat.completion.chunk`` and legacy completion chunks by ``text_completion``; the
``usage`` key appears only when the client asked for it (``stream_options.include_usage``)."""

from __future__ import annotations

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from apidistill.serve.openai_schema import chat_chunk, completion_chunk

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize(
    ("make", "obj", "choice"),
    [
        (chat_chunk, "chat.completion.chunk", {"index": 0, "delta": {"content": "hi"}}),
        (
            completion_chunk,
            "text_completion",
            {"index": 0, "text": "hi", "finish_reason": "length"},
        ),
    ],
)
def test_chunks_name_their_object_and_carry_usage_only_when_asked(make, obj, choice) -> None:
    plain = make("id-1", "m", "fp", [choice], created=7)
    assert plain["object"] == obj and "usage" not in plain
    assert {k: plain[k] for k in ("id", "created", "model", "system_fingerprint")} == {
        "id": "id-1", "created": 7, "model": "m", "system_fingerprint": "fp",
    }  # fmt: skip
    asked = make("id-1", "m", "fp", [choice], created=7, with_usage_field=True)
    assert asked["usage"] is None  # null until the last chunk
    last = make("id-1", "m", "fp", [], created=7, usage=USAGE, with_usage_field=True)
    typed = ChatCompletionChunk if obj == "chat.completion.chunk" else Completion
    assert typed.model_validate(last).usage.total_tokens == 5
    assert typed.model_validate(plain).id == "id-1"
