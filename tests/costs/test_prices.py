"""Price resolution: overrides, self-hosted, the bundled genai-prices table, unknown models."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest

from apidistill.config import PriceConfig, TeacherConfig
from apidistill.costs.prices import (
    ModelPrice,
    cost_of,
    price_for_teacher,
    resolve_price,
    worst_case_cost,
)
from apidistill.errors import ConfigError
from apidistill.records import Usage


def test_per_token_override_wins_over_the_table():
    p = resolve_price(
        "openai",
        "gpt-4.1-mini",
        override=PriceConfig(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2")),
    )
    assert (p.input_per_mtok, p.output_per_mtok, p.source) == (1, 2, "override")


def test_hourly_override_becomes_per_token():
    # $2/hour at 100 tokens/s = 2 / 360,000 $/token = 5.5556 $/Mtok.
    p = resolve_price(
        "openai_compatible",
        "m",
        override=PriceConfig(usd_per_hour=Decimal("2"), tokens_per_second=100),
    )
    assert p.input_per_mtok == p.output_per_mtok
    assert abs(p.input_per_mtok - Decimal(2) * 1_000_000 / 360_000) < Decimal("1e-20")
    assert cost_of(p, Usage(input_tokens=180_000, output_tokens=180_000)) == pytest.approx(
        Decimal(2), abs=Decimal("1e-18")
    )


def test_incomplete_or_conflicting_override_is_an_error():
    with pytest.raises(ConfigError, match="both input_per_mtok and output_per_mtok"):
        resolve_price("openai", "gpt-4o", override=PriceConfig(input_per_mtok=Decimal(1)))
    with pytest.raises(ConfigError, match="not both"):
        resolve_price(
            "openai",
            "gpt-4o",
            override=PriceConfig(
                input_per_mtok=Decimal(1),
                output_per_mtok=Decimal(1),
                usd_per_hour=Decimal(1),
                tokens_per_second=10,
            ),
        )


def test_self_hosted_is_free_and_says_so():
    p = resolve_price("openai_compatible", "smollm2-135m-instruct", self_hosted=True)
    assert p.input_per_mtok == p.output_per_mtok == 0 and p.source == "self-hosted"


@pytest.mark.parametrize(
    ("provider", "model", "base_url"),
    [
        ("openai", "gpt-4.1-mini", None),
        ("openai", "gpt-4o", None),
        ("anthropic", "claude-sonnet-4-5", None),
        ("openai_compatible", "deepseek-chat", "https://api.deepseek.com/v1"),
    ],
)
def test_bundled_table_prices(provider, model, base_url):
    p = resolve_price(provider, model, base_url=base_url)
    assert p.source.startswith("genai-prices ")
    assert 0 < p.input_per_mtok < p.output_per_mtok
    assert p.cached_input_per_mtok is not None and p.cached_input_per_mtok < p.input_per_mtok


def test_batch_discount_from_the_table():
    assert resolve_price("openai", "gpt-4.1-mini").batch_discount == Decimal("0.5")
    # DeepSeek has no Batch API in the table: no discount is assumed.
    p = resolve_price("openai", "deepseek-chat", base_url="https://api.deepseek.com")
    assert p.batch_discount == 0


def test_unknown_model_says_how_to_fix_it():
    with pytest.raises(ConfigError) as exc:
        resolve_price("openai", "gpt-imaginary-9")
    msg = str(exc.value)
    assert "openai / 'gpt-imaginary-9'" in msg
    assert "teacher.price" in msg and "teacher.allow_unpriced: true" in msg
    assert exc.value.key == "teacher.price"


def test_allow_unpriced_gives_unknown_costs_never_zero():
    p = resolve_price("openai", "gpt-imaginary-9", allow_unpriced=True)
    assert p is None
    assert cost_of(p, Usage(input_tokens=10, output_tokens=10)) is None
    assert worst_case_cost(p, 10, 10) is None


def test_prices_resolve_offline_and_ignore_auto_updated_snapshots(monkeypatch):
    """genai-prices can download fresh prices (UpdatePrices); apidistill must not depend on it."""
    import genai_prices.data_snapshot as ds

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    bogus = ds.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(ds, "_custom_snapshot", bogus)
    p = resolve_price("openai", "gpt-4o")
    assert p is not None and p.source.startswith("genai-prices")


def test_price_for_teacher_routes_self_hosted_and_hosts():
    local = TeacherConfig(
        provider="openai_compatible", model="smollm2-135m-instruct", base_url="http://127.0.0.1:9"
    )
    assert price_for_teacher(local).source == "self-hosted"
    served = TeacherConfig(provider="openai_compatible", model="smollm2-135m-instruct", launch={})
    assert price_for_teacher(served).source == "self-hosted"
    mistral = TeacherConfig(
        provider="openai_compatible",
        model="mistral-small-latest",
        base_url="https://api.mistral.ai/v1",
    )
    assert price_for_teacher(mistral).source.startswith("genai-prices")
    unpriced = TeacherConfig(
        provider="openai_compatible",
        model="x",
        base_url="https://llm.example.com/v1",
        allow_unpriced=True,
    )
    assert price_for_teacher(unpriced) is None


def test_cost_of_is_decimal_exact():
    p = ModelPrice(Decimal("0.4"), Decimal("1.6"), Decimal("0.1"))
    c = cost_of(p, Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=400))
    assert c == Decimal("0.00108")  # (600×0.4 + 400×0.1 + 500×1.6) / 1e6
    assert cost_of(p, Usage(input_tokens=1000, output_tokens=500), batch=True) == Decimal("0.0006")
