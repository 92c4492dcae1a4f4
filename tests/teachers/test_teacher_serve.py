"""OpenAITeacher (profile apidistill) against the real ``apidistill serve`` (slow)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest

from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers.logprobs import TokenVocab
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.profiles import server_profile

MODEL = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("apidistill.serve.launcher") is None,
        reason="apidistill/serve/launcher.py (launch_server) is not built yet",
    ),
]


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


async def test_serve_gives_token_ids_and_top20_logprobs():
    from apidistill.model_loading import load_tokenizer
    from apidistill.serve.launcher import launch_server

    handle = await _maybe_await(launch_server(MODEL, port=0))
    base = handle.base_url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    tok = load_tokenizer(MODEL)
    teacher = OpenAITeacher(
        MODEL,
        base_url=base,
        profile=server_profile("apidistill"),
        vocab=TokenVocab.from_tokenizer(tok),
    )
    try:
        req = TeacherRequest(
            messages=[Message(role="user", content="Name a color.")],
            params=GenerationParams(max_tokens=6, logprobs=True, top_logprobs=20),
        )
        resp = await teacher.complete(req)
        lps = resp.completion.logprobs
        assert lps, resp.logprobs_missing_reason
        vocab_size = len(tok.get_vocab())
        for pos in lps:
            assert isinstance(pos.token_id, int) and 0 <= pos.token_id < vocab_size
            assert len(pos.top) == 20
            assert all(isinstance(t.token_id, int) for t in pos.top)
            values = [t.logprob for t in pos.top]
            assert values == sorted(values, reverse=True)
        ids = [p.token_id for p in lps]
        assert tok.decode(ids, skip_special_tokens=True).strip() == resp.completion.text.strip()
    finally:
        await teacher.aclose()
        for name in ("aclose", "close", "stop", "shutdown"):
            if hasattr(handle, name):
                await _maybe_await(getattr(handle, name)())
                break
