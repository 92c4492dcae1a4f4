"""Prompt caching: Anthropic cache_control and its usage fields, cache writes and reads in the
price, the worst case and the estimate, OpenAI's automatic cached-input discount, and exact
Anthropic counts from count_tokens (loopback servers in the providers' documented shapes,
the official anthropic SDK as the client)."""

from __future__ import annotations

import json
import threading
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.config import TeacherConfig
from apidistill.costs.estimate import shared_prefix
from apidistill.costs.prices import ModelPrice, cost_of, resolve_price, worst_case_cost
from apidistill.errors import ConfigError
from apidistill.records import GenerationParams, Message, TeacherRequest, Usage
from apidistill.teachers.anthropic import AnthropicTeacher, build_anthropic_body
from apidistill.teachers.anthropic_count import count_with_anthropic
from apidistill.teachers.openai import OpenAITeacher
from apidistill.testing import provider_payloads as pp
from apidistill.testing.batch_server import BatchServer

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "apidistill" / "demo_data"  # the demo run file, tickets and prompt
SONNET = {"provider": "anthropic", "model": "claude-sonnet-4-5"}
# Anthropic's 5-minute-TTL prices: writes 1.25x input, reads 0.1x
CLAUDE = ModelPrice(D(3), D(15), D("0.3"), cache_write_per_mtok=D("3.75"))


def long_requests(n: int, *, words: int = 1500) -> list[TeacherRequest]:
    """System + one shot pair (> 1,024 loopback tokens together) + a distinct final turn."""
    system = " ".join(f"rule{i}" for i in range(words))
    return [
        TeacherRequest(
            messages=[
                Message(role="system", content=system),
                Message(role="user", content="Order 1: the lamp."),
                Message(role="assistant", content="order_id: 1"),
                Message(role="user", content=f"Order {i + 10}: ticket number {i}."),
            ],
            params=GenerationParams(max_tokens=16),
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- prices


def test_genai_prices_carry_anthropic_cache_write_and_read():
    p = resolve_price("anthropic", "claude-sonnet-4-5")
    assert p is not None and p.cache_write_per_mtok == p.input_per_mtok * D("1.25")
    assert p.cached_input_per_mtok == p.input_per_mtok * D("0.1")


def test_cost_of_prices_each_share_at_its_rate():
    u = Usage(
        input_tokens=2000, output_tokens=10, cached_input_tokens=1000, cache_write_input_tokens=500
    )
    want = (500 * D(3) + 1000 * D("0.3") + 500 * D("3.75") + 10 * D(15)) / 10**6
    assert cost_of(CLAUDE, u) == want


@settings(max_examples=300, deadline=None)
@given(
    bound=st.integers(1, 200_000),
    out_cap=st.integers(1, 4096),
    data=st.data(),
)
def test_worst_case_bounds_every_cache_split(bound, out_cap, data):
    """Whatever share of the input is read from or written to the cache, a usage inside the
    bounds never costs more than the reservation."""
    inp = data.draw(st.integers(1, bound))
    read = data.draw(st.integers(0, inp))
    write = data.draw(st.integers(0, inp - read))
    out = data.draw(st.integers(0, out_cap))
    u = Usage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=read,
        cache_write_input_tokens=write,
    )
    assert cost_of(CLAUDE, u) <= worst_case_cost(CLAUDE, bound, out_cap)
    assert worst_case_cost(CLAUDE, bound, 0) == bound * D("3.75") / 10**6


# --------------------------------------------------------------------------- request shape


def test_breakpoint_ends_the_shared_prefix():
    req = long_requests(1, words=3)[0]
    body = build_anthropic_body(req, model="claude-sonnet-4-5")
    assert body["system"] == "rule0 rule1 rule2"  # the prefix ends later: system stays plain
    shot = body["messages"][1]
    assert shot["content"] == [
        {"type": "text", "text": "order_id: 1", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"][-1]["content"] == "Order 10: ticket number 0."  # the task input
    only_system = req.model_copy(update={"messages": [req.messages[0], req.messages[-1]]})
    body = build_anthropic_body(only_system, model="m")
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    bare = req.model_copy(update={"messages": [req.messages[-1]]})
    assert "cache_control" not in json.dumps(build_anthropic_body(bare, model="m"))
    assert "cache_control" not in json.dumps(
        build_anthropic_body(req, model="m", prompt_cache=False)
    )


def test_prompt_cache_switch_is_anthropic_only():
    assert TeacherConfig(**SONNET).marks_prompt_cache
    assert not TeacherConfig(**SONNET, prompt_cache=False).marks_prompt_cache
    with pytest.raises(ValidationError, match="prompt_cache"):
        TeacherConfig(provider="openai", model="gpt-4.1-mini", prompt_cache=True)
    with pytest.raises(ValidationError, match="count_tokens"):
        TeacherConfig(provider="openai", model="gpt-4.1-mini", count_tokens=True)


# --------------------------------------------------------------------------- usage and ledger


async def test_anthropic_usage_with_cache_writes_then_reads():
    async with BatchServer() as srv:
        t = AnthropicTeacher("claude-sonnet-4-5", base_url=srv.anthropic_url, api_key="k")
        reqs = long_requests(2)
        first = await t.complete(reqs[0])
        second = await t.complete(reqs[1])
        await t.aclose()
    u1, u2 = first.completion.usage, second.completion.usage
    assert u1.cache_write_input_tokens > 1024 and u1.cached_input_tokens == 0
    assert (
        u2.cached_input_tokens == u1.cache_write_input_tokens and u2.cache_write_input_tokens == 0
    )
    assert u1.input_tokens == u2.input_tokens  # every input token, cache traffic included
    # the teacher returns usage only; the costs code (used by the harvest engine) prices it
    assert first.completion.cost_usd is None and second.completion.cost_usd is None
    assert cost_of(CLAUDE, u2) < cost_of(CLAUDE, u1)
    plain = u2.input_tokens - u2.cached_input_tokens
    assert (
        cost_of(CLAUDE, u2)
        == (plain * D(3) + u2.cached_input_tokens * D("0.3") + u2.output_tokens * D(15)) / 10**6
    )


def test_anthropic_usage_without_cache_fields():
    from apidistill.teachers.anthropic import parse_anthropic_body

    msg = pp.anthropic_message(
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    )
    for k in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        del msg["usage"][k]
    c = parse_anthropic_body(msg, model="m")
    assert c.usage.cached_input_tokens == c.usage.cache_write_input_tokens == 0
    assert c.cost_usd is None  # priced by the engine, not the client
    assert (
        cost_of(CLAUDE, c.usage)
        == (c.usage.input_tokens * D(3) + c.usage.output_tokens * D(15)) / 10**6
    )


async def test_openai_cached_tokens_are_billed_at_the_cached_rate(monkeypatch):
    """usage.prompt_tokens_details.cached_tokens from the API → the cached-input rate."""
    from aiohttp import web

    price = resolve_price("openai", "gpt-4.1-mini")
    assert price is not None and price.cached_input_per_mtok < price.input_per_mtok

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(
            pp.openai_chat_completion(await request.json(), cached_tokens=1024)
        )

    server = web.Application()
    server.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        t = OpenAITeacher(
            "gpt-4.1-mini",
            provider="openai",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="k",
        )
        resp = await t.complete(long_requests(1)[0])
        await t.aclose()
    finally:
        await runner.cleanup()
    u = resp.completion.usage
    assert u.cached_input_tokens == 1024
    assert resp.completion.cost_usd is None  # the client returns usage; the engine prices
    assert cost_of(price, u) == (
        (u.input_tokens - 1024) * price.input_per_mtok + 1024 * price.cached_input_per_mtok
        + u.output_tokens * price.output_per_mtok
    ) / 10**6  # fmt: skip


# --------------------------------------------------------------------------- count_tokens


async def test_count_tokens_counts_each_distinct_request_once():
    reqs = long_requests(3)
    reqs.append(reqs[0].model_copy())  # a repeat: no second call
    async with BatchServer() as srv:
        counts = await count_with_anthropic(
            TeacherConfig(**SONNET),
            reqs,
            prefix=shared_prefix(reqs),
            api_key="k",
            base_url=srv.anthropic_url,
        )
        calls = srv.count_tokens_calls
    want = [
        pp.anthropic_count_tokens(build_anthropic_body(r, model="claude-sonnet-4-5"))[
            "input_tokens"
        ]
        for r in reqs
    ]
    assert counts.per_request == want
    assert calls == counts.calls == 3 + 1  # 3 distinct bodies + the final turn alone
    tail = {"model": "m", "messages": [{"role": "user", "content": reqs[0].messages[-1].content}]}
    assert counts.prefix_tokens == want[0] - pp.anthropic_count_tokens(tail)["input_tokens"]


# --------------------------------------------------------------------------- the estimate


def _demo_run_file(folder: Path, teacher: dict, **extra) -> Path:
    data = yaml.safe_load((DEMO / "migrate.yaml").read_text(encoding="utf-8"))
    data["run_dir"] = str(folder / "run")
    data["teacher"] = {**teacher, **extra}
    data["prompts"]["path"] = str(DEMO / "tickets.jsonl")
    data["prompts"]["template"] = str(DEMO / "prototype_prompt.yaml")
    data["budget"] = {"usd": 50}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _estimate_json(path: Path, *args: str, env: dict | None = None) -> dict:
    res = CliRunner().invoke(app, ["estimate", str(path), "--json", *args], env=env)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_demo_prefix_saving_with_anthropic(tmp_path):
    """The demo's 1,580-token prototype prompt on Claude: cache writes for the first wave,
    reads after; the estimate shows expected with caching against without."""
    est = _estimate_json(_demo_run_file(tmp_path, SONNET))
    n, conc = est["requests"], 16
    cached = est["cached_prefix_tokens"]
    assert est["shared_prefix_tokens"] >= 1024 and cached == est["shared_prefix_tokens"]
    assert est["cache_write_tokens"] == cached * conc
    assert est["cache_read_tokens"] == cached * (n - conc)
    with_cache, without = D(est["usd_expected"]), D(est["usd_expected_uncached"])
    saving = D(cached) * (n - conc) * (D(3) - D("0.3")) - D(cached) * conc * (D("3.75") - D(3))
    assert without - with_cache == saving / 10**6 and saving > 0
    # the worst case still prices every input token as a cache write
    assert D(est["usd_max"]) == (
        est["input_tokens_bound"] * D("3.75") + est["output_tokens_max"] * 15
    ) / D(10**6)
    text = (
        CliRunner()
        .invoke(app, ["estimate", str(tmp_path / "run.yaml")], env={"COLUMNS": "250"})
        .output
    )
    assert (
        "prompt cache" in text and "with caching vs" in text and "written by the first 16" in text
    )


def test_demo_prefix_without_marking_or_under_the_minimum(tmp_path):
    est = _estimate_json(_demo_run_file(tmp_path, SONNET, prompt_cache=False))
    assert est["usd_expected"] == est["usd_expected_uncached"] and est["cache_method"].startswith(
        "none"
    )
    est = _estimate_json(
        _demo_run_file(tmp_path, {"provider": "anthropic", "model": "claude-opus-4-5"})
    )
    assert "under the 4,096-token minimum" in est["cache_method"]
    assert est["usd_expected"] == est["usd_expected_uncached"]


def test_demo_prefix_saving_with_openai(tmp_path):
    est = _estimate_json(_demo_run_file(tmp_path, {"provider": "openai", "model": "gpt-4.1-mini"}))
    prefix = est["shared_prefix_tokens"]
    assert prefix >= 1024 and est["cached_prefix_tokens"] == 1024 + (prefix - 1024) // 128 * 128
    assert est["cache_write_tokens"] == 0 and "OpenAI automatic caching" in est["cache_method"]
    assert D(est["usd_expected"]) < D(est["usd_expected_uncached"])


def test_estimate_count_tokens_flag_uses_exact_counts(tmp_path):
    srv = BatchServer()
    import asyncio

    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        path = _demo_run_file(tmp_path, SONNET, base_url=srv.anthropic_url)
        data = yaml.safe_load(path.read_text())
        data["prompts"]["limit"] = 20
        path.write_text(yaml.safe_dump(data))
        env = {"ANTHROPIC_API_KEY": "sk-ant-test"}
        approx = _estimate_json(path, env=env)
        assert srv.count_tokens_calls == 0  # off by default: nothing sent
        exact = _estimate_json(path, "--count-tokens", env=env)
        assert srv.count_tokens_calls == 20 + 1
        assert exact["input_exact"] and exact["input_method"] == "Anthropic count_tokens"
        assert not approx["input_exact"]
        assert exact["input_tokens_bound"] >= exact["input_tokens"]
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def test_harvest_books_cache_writes_and_reads_in_the_ledger(tmp_path):
    """A real harvest (official SDK, loopback Anthropic): the first request writes the prefix,
    the rest read it; the journal's costs, the ledger's token split and the budget agree."""
    from apidistill.config import HarvestConfig
    from apidistill.costs.budget import Budget
    from apidistill.costs.ledger import Ledger
    from apidistill.costs.tokens import TokenCounter
    from apidistill.harvest import HarvestOptions, harvest

    reqs = long_requests(5)
    counter = TokenCounter(TeacherConfig(**SONNET))
    budget = Budget("1.00")
    async with BatchServer() as srv:
        t = AnthropicTeacher("claude-sonnet-4-5", base_url=srv.anthropic_url, api_key="k")
        stream = harvest(
            reqs, teacher=t, journal=tmp_path / "j.sqlite", budget=budget, price=CLAUDE,
            config=HarvestConfig(concurrency=1), progress=False,
            options=HarvestOptions(count_input_tokens=lambda r: counter.bound(r).n),
        )  # fmt: skip
        results = [r async for r in stream]
        await t.aclose()
    assert all(r.ok for r in results) and not stream.summary.usage_flags
    usages = [r.completion.usage for r in results]
    prefix = usages[0].cache_write_input_tokens
    assert prefix > 1024 and sum(u.cache_write_input_tokens for u in usages) == prefix
    assert sum(u.cached_input_tokens for u in usages) == 4 * prefix
    total = Ledger(tmp_path / "j.sqlite").totals()
    assert total.cache_write_input_tokens == prefix and total.cached_input_tokens == 4 * prefix
    assert total.cost_usd == sum(cost_of(CLAUDE, u) for u in usages) == budget.spent
    assert (
        f"({4 * prefix} cache read, {prefix} cache write)" in Ledger(tmp_path / "j.sqlite").table()
    )


def test_count_tokens_flag_refused_for_another_teacher(tmp_path):
    path = _demo_run_file(tmp_path, {"provider": "openai", "model": "gpt-4.1-mini"})
    res = CliRunner().invoke(app, ["estimate", str(path), "--count-tokens"])
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError)
    assert "count_tokens" in str(res.exception) and "counted locally" in str(res.exception)
