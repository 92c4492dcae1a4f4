"""harvest(teacher=TeacherConfig | "provider:model", policy=..., budget=amount): the typed
front door builds, prices and closes the client itself, and checks the terms first."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest
from harvest_fakes import requests

import apidistill.teachers
from apidistill import (
    HarvestConfig,
    HarvestOptions,
    PolicyConfig,
    PolicyDenied,
    PriceConfig,
    TeacherConfig,
    harvest,
    harvest_sync,
)
from apidistill.costs.ledger import Ledger
from apidistill.costs.prices import ModelPrice, cost_of

PRICE = PriceConfig(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))


def _config(srv, **kw) -> TeacherConfig:
    return TeacherConfig(
        provider="openai_compatible", model="fault-model", base_url=srv.base_url, **kw
    )


async def test_a_teacher_config_is_built_priced_by_the_engine_and_closed(
    fault, tmp_path, quick_retry
):
    srv = fault(latency_ms=2)
    stream = harvest(
        requests(6),
        teacher=_config(srv, price=PRICE),
        journal=tmp_path / "j.sqlite",
        config=HarvestConfig(concurrency=3),
        budget="1.00",
        progress=False,
        options=HarvestOptions(retry_policy=quick_retry),
    )
    closed = []
    real_close = stream.teacher.aclose

    async def aclose() -> None:
        closed.append(True)
        await real_close()

    stream.teacher.aclose = aclose  # type: ignore[method-assign]
    results = [r async for r in stream]
    assert len(results) == 6 and all(r.ok for r in results)
    price = ModelPrice(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
    for r in results:  # the run file's price, applied by the engine (the client prices nothing)
        assert r.completion.cost_usd == cost_of(price, r.completion.usage) > 0
    assert stream.summary.spent_usd == sum(r.completion.cost_usd for r in results)
    assert closed == [True]  # built here, so closed here


def test_harvest_sync_with_a_teacher_config_closes_it_once(
    fault, tmp_path, quick_retry, monkeypatch
):
    from apidistill.teachers.openai import OpenAITeacher

    srv = fault(latency_ms=2)
    closes = []
    real_close = OpenAITeacher.aclose

    async def aclose(self) -> None:
        closes.append(self)
        await real_close(self)

    monkeypatch.setattr(OpenAITeacher, "aclose", aclose)
    summary = harvest_sync(
        requests(3),
        teacher=_config(srv),
        journal=tmp_path / "j.sqlite",
        progress=False,
        options=HarvestOptions(retry_policy=quick_retry),
    )
    assert summary.done == 3 and len(closes) == 1


def test_a_denied_use_sends_nothing_and_opens_no_journal(fault, tmp_path, monkeypatch):
    srv = fault(latency_ms=2)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-front-door-0123456789")
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    journal = tmp_path / "j.sqlite"
    with pytest.raises(PolicyDenied):
        harvest(
            requests(2),
            teacher="openai:gpt-4.1-mini",
            policy=PolicyConfig(use="competing"),
            journal=journal,
        )
    assert not journal.exists() and srv.stats()["received"] == 0


async def test_an_allowed_use_is_on_the_stream_before_the_first_request(
    fault, tmp_path, monkeypatch
):
    srv = fault(latency_ms=2)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-front-door-0123456789")
    teacher = TeacherConfig(provider="openai", model="gpt-4.1-mini", base_url=srv.base_url)
    stream = harvest(
        requests(2),
        teacher=teacher,
        policy=PolicyConfig(use="internal"),
        journal=tmp_path / "j.sqlite",
        progress=False,
    )
    assert stream.decision is not None and stream.decision.decision.startswith("allow")
    assert srv.stats()["received"] == 0  # decided before anything was sent
    summary = await stream
    assert summary.done == 2 and not summary.unpriced  # genai-prices priced gpt-4.1-mini
    assert Ledger(tmp_path / "j.sqlite").totals().cost_usd > 0


def test_a_policy_needs_a_teacher_config_not_a_client(tmp_path):
    from harvest_fakes import FakeTeacher

    from apidistill import ConfigError

    with pytest.raises(ConfigError, match="policy check needs to know the teacher"):
        harvest(
            requests(1),
            teacher=FakeTeacher(),
            policy=PolicyConfig(use="internal"),
            journal=tmp_path / "j.sqlite",
        )


def test_teacher_clients_import_no_cost_code():
    """Teachers return usage; only the harvest engine (with apidistill.costs) prices. (The
    Anthropic token counter may name the estimate's plain ``AnthropicCounts`` record it fills;
    no teacher module touches prices or the budget.)"""
    folder = Path(apidistill.teachers.__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("apidistill.costs.prices", "apidistill.costs.budget")
                ), path.name
                if node.module.startswith("apidistill.costs"):
                    assert [a.name for a in node.names] == ["AnthropicCounts"], path.name
