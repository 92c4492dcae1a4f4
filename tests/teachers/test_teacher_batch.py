"""Batch API round trips against the loopback batch server, for both providers."""

from __future__ import annotations

import hashlib

import pytest

from apidistill.config import TeacherConfig
from apidistill.errors import (
    CapabilityError,
    ConfigError,
    DataError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
)
from apidistill.records import Completion, GenerationParams, Message, TeacherRequest
from apidistill.teachers import PROVIDERS, make_batch_client, make_teacher
from apidistill.teachers.anthropic_batch import AnthropicBatch, decode_custom_id, encode_custom_id
from apidistill.teachers.batch import BatchLimits, chunk_key_for, plan_chunks
from apidistill.teachers.openai_batch import OpenAIBatch
from apidistill.testing.batch_server import BatchServer
from apidistill.testing.provider_payloads import openai_error

KEY = "sk-batchkey-SECRETSECRET123"


def req(i: int, **params) -> TeacherRequest:
    return TeacherRequest(
        messages=[Message(role="system", content="sys"), Message(role="user", content=f"q{i}")],
        params=GenerationParams(max_tokens=20, **params),
    )


@pytest.fixture
async def server():
    async with BatchServer(polls_to_finish=2) as s:
        yield s


async def drain(client, batch_id):
    return {cid: r async for cid, r in client.results(batch_id)}


async def wait_end(client, batch_id, limit=10):
    for _ in range(limit):
        st = await client.poll(batch_id)
        if st.state != "in_progress":
            return st
    raise AssertionError("batch never ended")


# ----------------------------------------------------------------------------- OpenAI


async def test_openai_round_trip_with_line_errors_and_resume(server):
    client = OpenAIBatch("gpt-4o-mini", api_key=KEY, base_url=server.openai_url)
    items = [(f"id-{i}", req(i, logprobs=True, top_logprobs=2)) for i in range(5)]
    server.line_errors["id-3"] = (400, openai_error("bad request line", code="invalid_value"))
    key = chunk_key_for("openai@x", "gpt-4o-mini", [i for i, _ in items])
    assert await client.find_existing(key) is None
    bid = await client.submit(items, key)
    # The upload is the documented JSONL: one POST line per request, one model, one url.
    _, data = next(v for v in server.files.values() if v[0]["purpose"] == "batch")
    first = data.decode().splitlines()[0]
    assert '"url":"/v1/chat/completions"' in first and '"max_completion_tokens":20' in first
    # A resumed run finds the same batch by its metadata instead of paying again.
    assert await client.find_existing(key) == bid
    assert await client.find_existing("another-chunk") is None
    first_poll = await client.poll(bid)
    assert first_poll.state == "in_progress" and first_poll.provider_status == "in_progress"
    st = await wait_end(client, bid)
    assert st.state == "ended" and st.counts.total == 5
    assert (st.counts.succeeded, st.counts.errored) == (4, 1) and st.has_results
    got = await drain(client, bid)
    assert set(got) == {f"id-{i}" for i in range(5)}
    bad = got.pop("id-3")
    assert isinstance(bad, TeacherRejected) and bad.status == 400 and "bad request line" in str(bad)
    for c in got.values():
        assert isinstance(c, Completion) and c.text and c.usage.output_tokens > 0
        assert c.logprobs is not None and all(len(t.top) == 2 for t in c.logprobs)
        assert c.provider == "openai" and c.model_version
    assert sum(server.processed.values()) == 5 and max(server.processed.values()) == 1
    await client.aclose()


async def test_openai_expired_batch_returns_finished_work(server):
    server.expire_after = 2
    client = OpenAIBatch("gpt-4o-mini", api_key=KEY, base_url=server.openai_url)
    items = [(f"e{i}", req(i)) for i in range(5)]
    bid = await client.submit(items, "chunk-exp")
    st = await wait_end(client, bid)
    assert st.state == "expired" and st.has_results
    got = await drain(client, bid)
    done = [k for k, v in got.items() if isinstance(v, Completion)]
    expired = [k for k, v in got.items() if isinstance(v, TeacherTimeout)]
    assert sorted(done) == ["e0", "e1"] and sorted(expired) == ["e2", "e3", "e4"]
    assert all(got[k].maybe_billed is False for k in expired)
    await client.aclose()


async def test_openai_cancel_keeps_partial_work(server):
    server.cancel_keeps = 1
    client = OpenAIBatch("gpt-4o-mini", api_key=KEY, base_url=server.openai_url)
    bid = await client.submit([(f"c{i}", req(i)) for i in range(3)], "chunk-cancel")
    st = await client.cancel(bid)
    assert st.state == "in_progress" and st.provider_status == "cancelling"
    st = await wait_end(client, bid)
    assert st.state == "canceled"
    got = await drain(client, bid)
    assert isinstance(got["c0"], Completion)
    assert isinstance(got["c1"], TeacherUnavailable) and "cancelled" in str(got["c1"])
    await client.aclose()


async def test_openai_refuses_bad_batches_before_upload(server):
    client = OpenAIBatch("o3-mini", api_key=KEY, base_url=server.openai_url)
    with pytest.raises(CapabilityError):
        await client.submit([("a", req(0, logprobs=True, temperature=1.0))], "k")
    client2 = OpenAIBatch("gpt-4o", api_key=KEY, base_url=server.openai_url)
    with pytest.raises(DataError, match="unique"):
        await client2.submit([("a", req(0)), ("a", req(1))], "k")
    with pytest.raises(DataError, match="at least one"):
        await client2.submit([], "k")
    assert server.files == {} and server.jobs == {}
    await client.aclose()
    await client2.aclose()


async def test_openai_list_paginates_to_find_old_batches(server):
    client = OpenAIBatch("gpt-4o", api_key=KEY, base_url=server.openai_url, list_page_size=1)
    target = await client.submit([("x", req(0))], "old-chunk")
    for i in range(3):
        await client.submit([(f"y{i}", req(i))], f"newer-{i}")
    before = server.calls["GET /v1/batches"]
    assert await client.find_existing("old-chunk") == target
    assert server.calls["GET /v1/batches"] - before == 4  # walked four one-item pages
    short = OpenAIBatch(
        "gpt-4o", api_key=KEY, base_url=server.openai_url, list_page_size=1, max_list_pages=2
    )
    assert await short.find_existing("old-chunk") is None  # gives up after its page budget
    await client.aclose()
    await short.aclose()


async def test_openai_batch_errors_are_mapped_without_the_key(server):
    client = OpenAIBatch("gpt-4o", api_key=KEY, base_url=server.openai_url)
    with pytest.raises(TeacherRejected) as info:
        await client.poll("batch_missing")
    assert info.value.status == 404 and KEY not in str(info.value) and KEY not in repr(client)
    await client.aclose()


# ----------------------------------------------------------------------------- Anthropic


async def test_anthropic_round_trip_errors_and_resume(server):
    client = AnthropicBatch("claude-test", api_key=KEY, base_url=server.anthropic_url)
    sha_ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    items = [(sid, req(i)) for i, sid in enumerate(sha_ids)] + [("plain-id", req(9))]
    key = chunk_key_for("anthropic@x", "claude-test", [i for i, _ in items])
    bid = await client.submit(items, key)
    sent = server.jobs[bid].items
    assert all(len(cid) <= 64 for cid, _ in sent)
    assert all("temperature" not in params for _, params in sent)
    server.line_errors[sent[1][0]] = "invalid_request_error"
    # In progress: Anthropic shows no request ids yet, so only the journaled id finds it.
    assert await client.find_existing(key) is None
    st = await wait_end(client, bid)
    assert st.state == "ended" and st.counts.succeeded == 3 and st.counts.errored == 1
    assert await client.find_existing(key) == bid  # ended: recognized by its custom_ids
    assert await client.find_existing("other") is None
    got = await drain(client, bid)
    assert set(got) == {*sha_ids, "plain-id"}  # the caller's ids come back, tag stripped
    err = got[sha_ids[1]]
    assert isinstance(err, TeacherRejected) and err.status == 400
    ok = got["plain-id"]
    assert isinstance(ok, Completion) and ok.provider == "anthropic" and ok.text
    assert ok.usage.input_tokens > 0
    await client.aclose()


async def test_anthropic_expired_and_canceled(server):
    server.expire_after = 1
    client = AnthropicBatch("claude-test", api_key=KEY, base_url=server.anthropic_url)
    bid = await client.submit([(f"a{i}", req(i)) for i in range(3)], "k-exp")
    st = await wait_end(client, bid)
    assert st.state == "expired" and st.counts.expired == 2 and st.counts.succeeded == 1
    got = await drain(client, bid)
    assert isinstance(got["a0"], Completion)
    assert isinstance(got["a1"], TeacherTimeout) and isinstance(got["a2"], TeacherTimeout)

    server.expire_after = None
    server.cancel_keeps = 1
    bid2 = await client.submit([(f"b{i}", req(i)) for i in range(2)], "k-cancel")
    st2 = await client.cancel(bid2)
    assert st2.provider_status == "canceling" and st2.state == "in_progress"
    st2 = await wait_end(client, bid2)
    assert st2.state == "canceled" and st2.counts.canceled == 1
    got2 = await drain(client, bid2)
    assert isinstance(got2["b0"], Completion) and isinstance(got2["b1"], TeacherUnavailable)
    await client.aclose()


async def test_anthropic_refuses_logprobs_and_bad_ids(server):
    client = AnthropicBatch("claude-test", api_key=KEY, base_url=server.anthropic_url)
    with pytest.raises(CapabilityError):
        await client.submit([("a", req(0, logprobs=True))], "k")
    with pytest.raises(DataError, match="custom_id"):
        await client.submit([("has space", req(0))], "k")
    assert server.jobs == {}
    await client.aclose()


def test_custom_id_codec():
    sha = hashlib.sha256(b"x").hexdigest()
    for item in (sha, "row-17", "a_b", "x" * 53):
        cid = encode_custom_id("chunk", item)
        assert len(cid) <= 64
        assert decode_custom_id(cid) == (encode_custom_id("chunk", "z")[:10], item)
    with pytest.raises(DataError):
        encode_custom_id("chunk", "x" * 54)
    assert decode_custom_id("short") is None


# ----------------------------------------------------------------------------- planning


def test_plan_chunks_respects_count_and_bytes():
    items = list(range(10))
    chunks = plan_chunks(items, BatchLimits(max_requests=4, max_bytes=10**9), lambda _: 10)
    assert [len(c) for c in chunks] == [4, 4, 2]
    chunks = plan_chunks(items, BatchLimits(max_requests=100, max_bytes=35), lambda _: 10)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [x for c in chunks for x in c] == items
    with pytest.raises(DataError, match="#0"):
        plan_chunks([1], BatchLimits(max_requests=5, max_bytes=5), lambda _: 6)


def test_provider_limits_and_chunking():
    oa = OpenAIBatch("gpt-4o", api_key=KEY)
    an = AnthropicBatch("claude-test", api_key=KEY)
    assert (oa.limits.max_requests, oa.limits.max_bytes) == (50_000, 200_000_000)
    assert (an.limits.max_requests, an.limits.max_bytes) == (10_000, 256_000_000)
    items = [(f"i{i}", req(i)) for i in range(10_001)]
    assert [len(c) for c in an.plan_chunks(items)] == [10_000, 1]
    assert [len(c) for c in oa.plan_chunks(items)] == [10_001]
    assert chunk_key_for("t", "m", ["a", "b"]) == chunk_key_for("t", "m", ["a", "b"])
    assert chunk_key_for("t", "m", ["a", "b"]) != chunk_key_for("t", "m", ["b", "a"])


def test_make_batch_client_registry():
    """One registry builds both clients of a provider from the same teacher config."""
    oa = TeacherConfig(provider="openai", model="gpt-4o")
    an = TeacherConfig(provider="anthropic", model="c", prompt_cache=False)
    assert isinstance(make_batch_client(oa, api_key=KEY), OpenAIBatch)
    client = make_batch_client(an, api_key=KEY)
    assert isinstance(client, AnthropicBatch) and client.prompt_cache is False
    assert make_teacher(oa, api_key=KEY).provider == "openai"
    assert set(PROVIDERS) == {"openai", "anthropic", "openai_compatible"}
    assert all(p.online is not None for p in PROVIDERS.values())
    compatible = TeacherConfig(provider="openai_compatible", model="m", base_url="http://x")
    with pytest.raises(ConfigError, match="no Batch API"):
        make_batch_client(compatible, api_key=None)


def test_batch_protocol_module_imports_no_implementation():
    """teachers/batch.py is the contract the implementations import; importing it must not
    import them back (the old batch ↔ openai_batch/anthropic_batch cycle)."""
    import ast
    import inspect

    from apidistill.teachers import batch

    tree = ast.parse(inspect.getsource(batch))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.endswith(("openai_batch", "anthropic_batch"))}
