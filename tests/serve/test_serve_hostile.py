"""Hostile requests against the server (issue 23's fuzz findings, each now a test).

One in-process server on the tiny model (uvicorn in a thread, so a test can watch the engine
from inside): every malformed request gets a 4xx in its API's own error shape, one client's
odd sampling settings never fail the requests batched with it, and tokenizing a huge prompt
does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from apidistill.serve.app import create_app
from apidistill.serve.engine import ServeEngine
from apidistill.serve.http_common import ServeSettings
from apidistill.testing.inprocess import serve_in_thread

NAME = "student"
MSGS = [{"role": "user", "content": "hi"}]
CAPS = {"max_tokens_cap": 8, "max_n": 2, "max_body_bytes": 4 * 1024 * 1024}


@dataclass
class Live:
    root: str  # http://127.0.0.1:PORT
    engine: ServeEngine

    @property
    def base(self) -> str:
        return self.root + "/v1"


@pytest.fixture(
    scope="module", params=["transformers", pytest.param("llamacpp", marks=pytest.mark.slow)]
)
def live(request, tiny_model_dir) -> Iterator[Live]:
    """The same server on each backend: the tiny model in the transformers engine, the
    embedded SmolLM2 GGUF in llama.cpp (no prefix reuse, so greedy answers repeat exactly;
    slow: ~95 s on 2 loaded cores, most of it the fuzzing and the 3.8 MB prompt)."""
    if request.param == "llamacpp":
        from apidistill.serve.backends.llamacpp import LlamaCppEngine
        from apidistill.testing.llamacpp_server import embedded_gguf

        engine = LlamaCppEngine.from_gguf(embedded_gguf(), num_threads=1, prefix_cache=False)
    else:
        engine = ServeEngine.from_spec(str(tiny_model_dir), max_batch_size=16, num_threads=1)
    app = create_app(engine, ServeSettings(served_model_name=NAME, **CAPS))
    with serve_in_thread(app) as (root, _):
        yield Live(root, engine)


def assert_openai_error(resp: httpx2.Response, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


def assert_anthropic_error(resp: httpx2.Response, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]
    return body["error"]


def post_raw(live: Live, path: str, raw: bytes) -> httpx2.Response:
    headers = {"content-type": "application/json"}
    return httpx2.post(live.base + path, content=raw, headers=headers, timeout=60)


# --------------------------------------------------------------------------- sampling extremes


async def test_tiny_temperature_or_top_p_never_fails_a_co_batched_request(live):
    """temperature 1e-40 overflowed the logits to inf and top_p 1e-46 rounded to 0.0 in
    float32, dropping every token: the sampler raised, and the whole batch got a 500."""
    ordinary = {"model": NAME, "messages": MSGS, "max_tokens": 8, "ignore_eos": True}
    hostile = [
        {"temperature": 1e-40},
        {"temperature": 1e-38, "top_p": 1e-46},
        {"temperature": 1.0, "top_p": 1e-46},
        {"temperature": 5e-324},
    ]
    async with httpx2.AsyncClient(base_url=live.base, timeout=120) as c:
        calls = [c.post("/chat/completions", json=ordinary) for _ in range(8)]
        calls += [c.post("/chat/completions", json={**ordinary, **h}) for h in hostile]
        calls.append(
            c.post(
                "/messages",
                json={"model": NAME, "messages": MSGS, "max_tokens": 8, "temperature": 1e-40},
            )
        )
        answers = await asyncio.gather(*calls)
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
    greedy = httpx2.post(
        live.base + "/chat/completions", json={**ordinary, "temperature": 0}, timeout=60
    ).json()["choices"][0]["message"]["content"]
    for r in answers[8:12]:  # each of these settings is greedy decoding in all but name
        assert r.json()["choices"][0]["message"]["content"] == greedy


# --------------------------------------------------------------------------- malformed bodies

SURROGATE_CASES = [
    ("/chat/completions", b'{"model":"student","max_tokens":2,'
     b'"messages":[{"role":"user","content":"a\\ud800b"}]}', "messages.0.content"),
    ("/chat/completions", b'{"model":"student","max_tokens":2,"stop":["\\udfff"],'
     b'"messages":[{"role":"user","content":"hi"}]}', "stop.0"),
    ("/completions", b'{"model":"student","max_tokens":2,"prompt":"\\uDBFF"}', "prompt"),
    ("/chat/completions", b'{"model":"\\ud83d","messages":[]}', "model"),
    ("/messages", b'{"model":"student","max_tokens":2,'
     b'"messages":[{"role":"user","content":"\\ud800"}]}', "messages.0.content"),
    ("/messages", b'{"model":"student","max_tokens":2,"system":"\\udc00",'
     b'"messages":[{"role":"user","content":"hi"}]}', "system"),
    ("/messages/count_tokens", b'{"model":"student",'
     b'"messages":[{"role":"user","content":[{"type":"text","text":"\\ud800"}]}]}',
     "messages.0.content.0.text"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "field"), SURROGATE_CASES)
def test_lone_surrogates_are_a_400_naming_the_field(live, path, raw, field):
    resp = post_raw(live, path, raw)
    if path.startswith("/messages"):
        err = assert_anthropic_error(resp)
    else:
        err = assert_openai_error(resp)
        assert err["param"] == field and err["code"] == "invalid_value"
    assert f"'{field}'" in err["message"] and "surrogate" in err["message"]


def test_a_valid_surrogate_pair_is_ordinary_text(live):
    raw = (
        b'{"model":"student","max_tokens":2,'
        b'"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    )
    assert post_raw(live, "/chat/completions", raw).status_code == 200
    assert post_raw(live, "/messages", raw).status_code == 200


@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/messages"])
def test_a_100000_deep_body_is_a_400(live, path):
    deep = b"[" * 100_000 + b"]" * 100_000
    inside = b'{"model":"student","max_tokens":2,"metadata":' + b'{"a":' * 100_000
    inside += b"1" + b"}" * 100_001
    for raw in (deep, inside):
        resp = post_raw(live, path, raw)
        err = (assert_anthropic_error if path == "/messages" else assert_openai_error)(resp)
        assert "nested too deeply" in err["message"]


OPENAI_TYPE_CASES = [
    ("logprobs", {"logprobs": "yes"}),
    ("logprobs", {"logprobs": 1}),
    ("n", {"n": "2"}),
    ("stream", {"stream": "true"}),
    ("max_tokens", {"max_tokens": "4"}),
    ("temperature", {"temperature": "0.5"}),
]


@pytest.mark.parametrize(("param", "extra"), OPENAI_TYPE_CASES)
def test_openai_fields_of_the_wrong_type_are_a_400(live, param, extra):
    body = {"model": NAME, "messages": MSGS, "max_tokens": 2, **extra}
    resp = httpx2.post(live.base + "/chat/completions", json=body, timeout=60)
    assert assert_openai_error(resp)["param"] == param


def test_legacy_completions_logprobs_must_be_an_integer(live):
    body = {"model": NAME, "prompt": "hi", "max_tokens": 2, "logprobs": "yes"}
    resp = httpx2.post(live.base + "/completions", json=body, timeout=60)
    assert assert_openai_error(resp)["param"] == "logprobs"


@pytest.mark.parametrize("extra", [{"stream": "yes"}, {"max_tokens": "2"}, {"top_k": 1.5}])
def test_anthropic_fields_of_the_wrong_type_are_a_400(live, extra):
    body = {"model": NAME, "messages": MSGS, "max_tokens": 2, **extra}
    err = assert_anthropic_error(httpx2.post(live.base + "/messages", json=body, timeout=60))
    assert next(iter(extra)) in err["message"]


_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
_USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
MALFORMED_OPENAI_TOOL_TURNS = [
    [{"role": "tool", "content": "x"}],
    [{"role": "tool", "tool_call_id": "call_nope", "content": "x"}],
    [{"role": "tool", "tool_call_id": 7, "content": "x"}],
    [{"role": "assistant", "tool_calls": "call"}],
    [{"role": "assistant", "tool_calls": [{"id": "c"}]}],
    [{"role": "assistant", "tool_calls": [{**_CALL, "function": {"name": "f", "arguments": "{"}}]}],
    [{"role": "assistant", "tool_calls": [{**_CALL, "function": {"name": "f", "arguments": {}}}]}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": "hi", "tool_calls": [_CALL]}],
    [{"role": "assistant", "tool_calls": [_CALL]}, {"role": "tool", "tool_call_id": "call_1"},
     {"role": "tool", "tool_call_id": "call_2", "content": "x"}],
]  # fmt: skip
MALFORMED_ANTHROPIC_TOOL_TURNS = [
    [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nope"}]}],
    [{"role": "user", "content": [{"type": "tool_result"}]}],
    [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 1}]}],
    [{"role": "user", "content": [_USE]}],
    [{"role": "user", "content": [{"type": "tool_use", "name": "f", "input": {}}]}],
    [{"role": "user", "content": [{**_USE, "input": "{}"}]}],
    [{"role": "user", "content": [{"type": "nope"}]}],
    [{"role": "user", "content": [{"text": "no type"}]}],
    [*MSGS, {"role": "assistant", "content": [_USE]}],
    [*MSGS, {"role": "assistant", "content": [_USE]},
     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                   "content": [{"type": "image"}]}]}],
]  # fmt: skip


@pytest.mark.parametrize("turns", MALFORMED_OPENAI_TOOL_TURNS)
def test_malformed_openai_tool_turns_are_a_400(live, turns):
    """On llama.cpp they fail validation; on transformers, which refuses tool turns, too."""
    body = {"model": NAME, "messages": [*MSGS, *turns], "max_tokens": 2, "stream": True}
    assert assert_openai_error(httpx2.post(live.base + "/chat/completions", json=body))["param"]


@pytest.mark.parametrize("turns", MALFORMED_ANTHROPIC_TOOL_TURNS)
@pytest.mark.parametrize("path", ["/messages", "/messages/count_tokens"])
def test_malformed_anthropic_tool_turns_are_a_400(live, turns, path):
    body = {"model": NAME, "messages": turns, "max_tokens": 2, "stream": True}
    assert "messages" in assert_anthropic_error(httpx2.post(live.base + path, json=body))["message"]


def test_the_transformers_backend_refuses_tool_turns_naming_the_backend(live):
    if getattr(live.engine, "supports_grammar", False):
        pytest.skip("the llama.cpp backend serves tool turns")
    turns = [{"role": "assistant", "tool_calls": [_CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": "x"}]  # fmt: skip
    body = {"model": NAME, "messages": [*MSGS, *turns], "max_tokens": 2}
    err = assert_openai_error(httpx2.post(live.base + "/chat/completions", json=body))
    assert err["param"] == "messages[1]" and "llamacpp" in err["message"]
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}
    msgs = [*MSGS, {"role": "assistant", "content": [_USE]}, {"role": "user", "content": [result]}]
    body = {"model": NAME, "messages": msgs, "max_tokens": 2}
    err = assert_anthropic_error(httpx2.post(live.base + "/messages", json=body))
    assert err["message"].startswith("messages.1.content.0:") and "llamacpp" in err["message"]


def test_an_int_is_still_a_valid_float(live):
    body = {"model": NAME, "messages": MSGS, "max_tokens": 2, "temperature": 0, "top_p": 1}
    assert httpx2.post(live.base + "/chat/completions", json=body, timeout=60).status_code == 200


# --------------------------------------------------------------------------- the event loop


async def test_health_answers_while_a_huge_prompt_is_tokenized(live, monkeypatch):
    """Tokenizing happens off the event loop: /health is answered while the tokenizer is
    still busy with a multi-megabyte prompt. An ordering check: the tokenizer is held until
    /health has answered (and lets go by itself after 30 s, so that the old on-loop code
    fails instead of hanging)."""
    engine = live.engine
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []
    real = engine.encode_messages

    def slow_encode(*args, **kwargs):
        entered.set()
        release.wait(30)
        try:
            return real(*args, **kwargs)
        finally:
            finished.append("tokenized")

    monkeypatch.setattr(engine, "encode_messages", slow_encode)
    huge = {"model": NAME, "messages": [{"role": "user", "content": "x" * 3_800_000}]}
    async with httpx2.AsyncClient(timeout=120) as c:
        big = asyncio.create_task(c.post(live.base + "/chat/completions", json=huge))
        assert await asyncio.to_thread(entered.wait, 60), "the big request never got tokenized"
        health = await c.get(live.root + "/health")
        order = [*finished, "health"]
        release.set()
        answer = await big
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert order == ["health"], "the event loop was blocked while tokenizing"
    assert finished == ["tokenized"]
    err = assert_openai_error(answer)  # 3.8 M byte-tokens: over the tiny model's context
    assert err["param"] == "max_tokens" and "context" in err["message"]


# --------------------------------------------------------------------------- schema-driven fuzz


def test_the_openapi_document_describes_the_request_bodies(live):
    doc = httpx2.get(live.root + "/openapi.json", timeout=60).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    ref = chat["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = doc["components"]["schemas"][ref]["properties"]
    assert props["model"]["enum"] == [NAME] and props["logprobs"]["anyOf"][0]["type"] == "boolean"
    assert {"/v1/completions", "/v1/messages", "/v1/messages/count_tokens", "/health"} <= set(
        doc["paths"]
    )


FUZZ_EXAMPLES = 40  # per generation mode; bounded so the default suite stays fast


def test_schemathesis_fuzzing_finds_no_server_error(live):
    """Cases generated from the server's own OpenAPI document, fitting it (positive) and
    breaking it (negative): never a 5xx, and every 4xx in the calling API's error shape."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(live.root + "/openapi.json")
    seen: list[int] = []

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode))
        def fuzz(case) -> None:
            resp = case.call(base_url=live.root, timeout=60)
            seen.append(resp.status_code)
            assert resp.status_code < 500, (case.path, case.body, resp.text)
            if resp.status_code >= 400:
                body = resp.json()
                if case.path.startswith("/v1/messages"):
                    assert body["type"] == "error" and body["error"]["message"], body
                else:
                    assert body["error"]["message"] and "code" in body["error"], body

        fuzz()
    assert any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen), seen
