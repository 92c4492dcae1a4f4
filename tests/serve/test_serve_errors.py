"""Bad requests get 4xx in the calling API's own error shape, and the server stays up."""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import openai
import pytest

MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "hi"}]


def chat(**overrides):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


OPENAI_CASES = [
    ("missing model", chat(model=...), 400, "model"),
    ("unknown model", chat(model="gpt-9"), 404, "model"),
    ("max_tokens 0", chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens above cap", chat(max_tokens=10**6), 400, "max_tokens"),
    (
        "max_completion_tokens negative",
        chat(max_completion_tokens=-3),
        400,
        "max_completion_tokens",
    ),
    ("top_logprobs 21", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top_logprobs without logprobs", chat(top_logprobs=2), 400, "top_logprobs"),
    ("n above cap", chat(n=99), 400, "n"),
    ("messages not a list", chat(messages="hi"), 400, "messages"),
    ("tool calling", chat(tools=[{"type": "function"}]), 400, "tools"),
    ("temperature out of range", chat(temperature=3), 400, "temperature"),
]


@pytest.fixture(scope="module")
def http(smol_server):
    with httpx2.Client(base_url=smol_server.base_url, timeout=120) as c:
        yield c


def assert_openai_error(resp, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def assert_anthropic_error(resp, status: int, kind: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    return body


@pytest.mark.parametrize(
    ("case", "body", "status", "param"), OPENAI_CASES, ids=[c[0] for c in OPENAI_CASES]
)
def test_openai_validation_errors(http, case, body, status, param):
    assert_openai_error(http.post("/chat/completions", json=body), status, param)


def test_openai_sdk_raises_its_own_exception_types(smol_server):
    client = openai.OpenAI(base_url=smol_server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-9", messages=MSGS, max_tokens=2)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    assert bad.value.param == "max_tokens"


def test_malformed_oversize_and_unknown_requests(http, smol_server):
    bad_json = http.post(
        "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_openai_error(bad_json, 400)
    not_object = http.post("/completions", json=[1, 2])
    assert_openai_error(not_object, 400)
    huge = b'{"model": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert_openai_error(http.post("/chat/completions", content=huge), 413)
    assert_anthropic_error(http.post("/messages", content=huge), 413, "request_too_large")
    assert_openai_error(http.get("/chat/completions"), 405)
    assert_openai_error(http.get("/no/such/path"), 404)
    # Still serving.
    ok = http.post("/chat/completions", json=chat(temperature=0))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    assert httpx2.get(smol_server.root_url + "/health").json()["status"] == "ok"


ANTHROPIC_CASES = [
    ("missing max_tokens", {"model": MODEL, "messages": MSGS}, 400, "invalid_request_error"),
    (
        "unknown model",
        {"model": "claude-x", "max_tokens": 2, "messages": MSGS},
        404,
        "not_found_error",
    ),
    (
        "max_tokens 0",
        {"model": MODEL, "max_tokens": 0, "messages": MSGS},
        400,
        "invalid_request_error",
    ),
    (
        "temperature above 1",
        {"model": MODEL, "max_tokens": 2, "messages": MSGS, "temperature": 1.5},
        400,
        "invalid_request_error",
    ),
    (
        "image block",
        {
            "model": MODEL,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
        },
        400,
        "invalid_request_error",
    ),
    (
        "empty messages",
        {"model": MODEL, "max_tokens": 2, "messages": []},
        400,
        "invalid_request_error",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "kind"), ANTHROPIC_CASES, ids=[c[0] for c in ANTHROPIC_CASES]
)
def test_anthropic_validation_errors(http, case, body, status, kind):
    assert_anthropic_error(http.post("/messages", json=body), status, kind)


def test_anthropic_malformed_json_and_sdk_exception(http, smol_server):
    assert_anthropic_error(
        http.post("/messages", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "invalid_request_error",
    )
    client = anthropic.Anthropic(base_url=smol_server.root_url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-x", max_tokens=2, messages=MSGS)


# --------------------------------------------------------------------------- auth + overload

KEY = "sk-test-serve-0123456789"


@pytest.fixture(scope="module")
def guarded(tiny_model_dir):
    """A tiny-model server with an API key, one generation slot and no queue."""
    from apidistill.serve.launcher import launch_server

    with launch_server(
        str(tiny_model_dir),
        api_key=KEY,
        max_batch_size=1,
        served_model_name="tiny",
        extra_args=["--max-queue", "0"],
        startup_timeout=240,
    ) as srv:
        yield srv


def test_api_key_is_required_in_both_styles(guarded):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 2}
    base = guarded.base_url
    err = assert_openai_error(httpx2.post(base + "/chat/completions", json=body), 401)
    assert err["code"] == "invalid_api_key"
    wrong = {"authorization": "Bearer sk-wrong-0000000000"}
    assert_openai_error(httpx2.post(base + "/chat/completions", json=body, headers=wrong), 401)
    assert_openai_error(httpx2.get(base + "/models"), 401)
    anth = {"model": "tiny", "max_tokens": 2, "messages": MSGS}
    assert_anthropic_error(
        httpx2.post(base + "/messages", json=anth, headers={"x-api-key": "nope"}),
        401,
        "authentication_error",
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="bad-key", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    assert ok.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2).choices
    a = anthropic.Anthropic(base_url=guarded.root_url, api_key=KEY, max_retries=0)
    assert a.messages.create(model="tiny", max_tokens=2, messages=MSGS).content
    assert KEY not in guarded.stderr_tail()


async def test_overload_gets_429_or_529_with_retry_after(guarded):
    long = {"max_tokens": 400, "ignore_eos": True, "temperature": 0}
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx2.AsyncClient(base_url=guarded.base_url, headers=headers, timeout=120) as c:
        burst = [
            c.post("/chat/completions", json={"model": "tiny", "messages": MSGS, **long})
            for _ in range(4)
        ]
        burst += [
            c.post(
                "/messages",
                json={"model": "tiny", "messages": MSGS, **long},
                headers={"x-api-key": KEY},
            )
            for _ in range(2)
        ]
        answers = await asyncio.gather(*burst)
        oa, an = answers[:4], answers[4:]
        assert any(r.status_code == 200 for r in answers)
        refused = [r for r in oa if r.status_code == 429]
        assert refused, [r.status_code for r in oa]
        for r in refused:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
        for r in an:
            if r.status_code != 200:
                assert_anthropic_error(r, 529, "overloaded_error")
                assert int(r.headers["retry-after"]) >= 1
        # Once the burst is over the server takes requests again.
        again = await c.post(
            "/chat/completions", json={"model": "tiny", "messages": MSGS, "max_tokens": 2}
        )
        assert again.status_code == 200


async def test_a_client_that_hangs_up_frees_its_slot(guarded):
    """A non-streaming request whose client times out is cancelled, not run to max_tokens."""
    import time

    headers = {"authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 1000, "ignore_eos": True}
    async with httpx2.AsyncClient(base_url=guarded.base_url, headers=headers) as c:
        with pytest.raises(httpx2.TimeoutException):
            await c.post("/chat/completions", json=body, timeout=0.8)
        deadline = time.monotonic() + 3.0
        health = {}
        while time.monotonic() < deadline:
            health = (await c.get(guarded.root_url + "/health")).json()
            if health["inflight"] == 0 and health["running"] == 0:
                break
            await asyncio.sleep(0.1)
        assert health["inflight"] == 0 and health["running"] == 0, health
        ok = await c.post(
            "/chat/completions",
            json={"model": "tiny", "messages": MSGS, "max_tokens": 2},
            timeout=60,
        )
        assert ok.status_code == 200


async def test_a_stream_closed_early_frees_its_slot(guarded):
    import time

    headers = {"authorization": f"Bearer {KEY}"}
    body = {
        "model": "tiny",
        "messages": MSGS,
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx2.AsyncClient(base_url=guarded.base_url, headers=headers, timeout=60) as c:
        async with c.stream("POST", "/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # hang up after the first event
        deadline = time.monotonic() + 3.0
        health = {}
        while time.monotonic() < deadline:
            health = (await c.get(guarded.root_url + "/health")).json()
            if health["inflight"] == 0 and health["running"] == 0:
                break
            await asyncio.sleep(0.1)
        assert health["inflight"] == 0 and health["running"] == 0, health


def test_an_admission_slot_is_released_once_even_if_never_used():
    import gc

    from apidistill.serve.http_common import Admission

    adm = Admission(limit=1)
    slot = adm.enter()
    assert slot is not None and adm.enter() is None and adm.rejected == 1
    slot.release()
    slot.release()
    assert adm.inflight == 0
    forgotten = adm.enter()
    assert adm.inflight == 1
    del forgotten
    gc.collect()
    assert adm.inflight == 0
