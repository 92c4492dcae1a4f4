"""The pre-flight estimate: token sums, dollar brackets, time bounds, rendering and the CLI."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from rich.console import Console
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.costs.estimate import estimate, render_estimate
from apidistill.costs.tokens import count_openai_chat_tokens

OPENAI = {"provider": "openai", "model": "gpt-4o-mini"}
PRICED = {
    **OPENAI,
    "price": {"input_per_mtok": "1", "output_per_mtok": "2", "cached_input_per_mtok": "0.5"},
}


def _render(est) -> str:
    console = Console(record=True, width=200)
    console.print(render_estimate(est))
    return console.export_text()


def test_openai_input_tokens_are_the_sum_of_exact_counts(run_config, make_requests, tickets):
    reqs = make_requests(tickets)
    est = estimate(run_config(OPENAI), reqs)
    expected = sum(
        count_openai_chat_tokens([m.model_dump() for m in r.messages], "o200k_base") for r in reqs
    )
    assert est.input_tokens == expected and est.input_exact
    assert est.requests == est.prompts == 4


def test_dollar_brackets_follow_their_definitions(run_config, make_requests, tickets):
    reqs = make_requests(tickets, max_tokens=40)
    est = estimate(run_config(PRICED), reqs, expected_output_tokens=10)
    n_in = est.input_tokens
    assert est.output_tokens_expected == 40 and est.output_tokens_max == 160
    assert est.usd_expected == (Decimal(n_in) * 1 + 40 * 2) / Decimal(1_000_000)
    assert est.usd_max == (Decimal(n_in) * 1 + 160 * 2) / Decimal(1_000_000)
    # min: the shared prefix is cached on all but the first request; no output.
    cached = est.shared_prefix_tokens * 3
    assert est.shared_prefix_tokens > 0
    assert est.usd_min == (Decimal(n_in - cached) * 1 + Decimal(cached) * Decimal("0.5")) / 10**6
    assert est.usd_min < est.usd_expected < est.usd_max


def test_expected_output_from_gold_answers(run_config, make_requests, tickets):
    gold = ["order_id: 778812\nproduct: Aurora Yoga Mat"] * 4
    est = estimate(run_config(OPENAI), make_requests(tickets, gold=gold))
    assert "mean length of 4 gold answers" in est.output_method
    import bpe_openai

    per_answer = len(bpe_openai.get_encoding("o200k_base").encode_ordinary(gold[0]))
    assert est.output_tokens_expected == 4 * per_answer


def test_expected_output_falls_back_to_half_max_tokens(run_config, make_requests, tickets):
    est = estimate(run_config(OPENAI), make_requests(tickets, max_tokens=41))
    assert est.output_tokens_expected == 4 * 20 and "max_tokens / 2" in est.output_method


def test_batch_prices_and_budget_check(run_config, make_requests, tickets):
    est = estimate(run_config(OPENAI, budget="0.000001"), make_requests(tickets))
    assert est.batch_discount == Decimal("0.5")
    assert est.batch_usd_expected == est.usd_expected / 2
    assert est.fits_budget is False
    assert any("exceeds the budget" in n for n in est.notes)
    roomy = estimate(run_config(OPENAI, budget="5"), make_requests(tickets))
    assert roomy.fits_budget is True


def test_unpriced_costs_are_unknown_not_zero(run_config, make_requests, tickets):
    teacher = {"provider": "openai", "model": "gpt-imaginary-9", "allow_unpriced": True}
    est = estimate(run_config(teacher), make_requests(tickets))
    assert est.usd_max is None and est.fits_budget is None
    assert "unknown" in _render(est)
    strict = estimate(
        run_config({"provider": "openai", "model": "gpt-imaginary-9"}), make_requests(tickets)
    )
    assert any("refuse to start" in n for n in strict.notes)


def test_approximate_counts_are_flagged(run_config, make_requests, tickets):
    est = estimate(
        run_config({"provider": "anthropic", "model": "claude-sonnet-4-5"}), make_requests(tickets)
    )
    assert not est.input_exact and any("approximate" in n for n in est.notes)


@pytest.mark.parametrize(
    ("harvest", "latency", "seconds", "bound"),
    [
        ({"rpm": 60}, None, 4.0, "RPM 60"),
        ({"rpm": 6000, "concurrency": 2}, 3.0, 6.0, "concurrency 2"),
        ({}, None, None, "unknown"),
    ],
)
def test_time_is_the_slowest_limit(
    run_config, make_requests, tickets, harvest, latency, seconds, bound
):
    est = estimate(run_config(OPENAI, harvest=harvest), make_requests(tickets), latency_s=latency)
    assert est.time_s == seconds and est.time_bound.startswith(bound)


def test_tpm_bound(run_config, make_requests, tickets):
    reqs = make_requests(tickets)
    est = estimate(run_config(OPENAI, harvest={"tpm": 1000}), reqs, expected_output_tokens=0)
    assert est.time_s == pytest.approx(est.input_tokens / 1000 * 60)


def test_render_names_every_figure(run_config, make_requests, tickets):
    text = _render(estimate(run_config(OPENAI, harvest={"rpm": 60}), make_requests(tickets)))
    for part in (
        "input tokens",
        "exact",
        "output worst case",
        "cost online",
        "cost Batch API",
        "budget",
        "RPM 60",
        "genai-prices",
    ):
        assert part in text


def test_self_hosted_estimate_is_exact(run_config, make_requests, tickets):
    from apidistill.model_loading import load_tokenizer

    teacher = {
        "provider": "openai_compatible",
        "model": "smollm2-135m-instruct",
        "tokenizer": "smollm2-135m-instruct",
        "base_url": "http://127.0.0.1:8000/v1",
    }
    reqs = make_requests(tickets)
    est = estimate(run_config(teacher), reqs)
    tok = load_tokenizer("smollm2-135m-instruct")
    actual = sum(
        len(
            tok.apply_chat_template(
                [m.model_dump() for m in r.messages], add_generation_prompt=True
            )["input_ids"]
        )
        for r in reqs
    )
    assert est.input_tokens == actual and est.input_exact
    assert est.usd_max == 0 and est.price_source == "self-hosted" and est.batch_discount is None


def test_estimate_command_sends_nothing(tmp_path, monkeypatch):
    import socket

    (tmp_path / "tickets.jsonl").write_text(
        "\n".join(
            json.dumps(
                {"id": f"t{i}", "text": f"Order {i}00 lamp broken", "gold": f"order_id: {i}00"}
            )
            for i in range(5)
        )
    )
    (tmp_path / "prompt.yaml").write_text(
        "system: Extract the order id.\nshots:\n  - user: Order 1 mug\n    assistant: 'order_id: 1'\n"
    )
    (tmp_path / "run.yaml").write_text(
        "teacher: {provider: openai, model: gpt-4o-mini}\n"
        "prompts: {path: tickets.jsonl, gold_field: gold, template: prompt.yaml}\n"
        "policy: {use: internal}\nbudget: {usd: 2}\nharvest: {rpm: 500, max_tokens: 30}\n"
    )

    def no_network(*args, **kwargs):
        raise AssertionError("estimate must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = CliRunner().invoke(app, ["estimate", str(tmp_path / "run.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["requests"] == 5 and data["input_exact"] is True
    assert data["output_tokens_max"] == 150 and "gold answers" in data["output_method"]
    table = CliRunner().invoke(
        app, ["estimate", str(tmp_path / "run.yaml")], env={"COLUMNS": "160"}
    )
    assert table.exit_code == 0 and "cost Batch API" in table.output


def test_max_is_what_the_budget_reserves_for_a_gateway(run_config, make_requests):
    """provider openai behind another host: the tokenizer is unknown, so the expected input is
    an approximation but the max (and the budget's reservation) uses the byte bound."""
    from apidistill.costs.prices import ModelPrice, worst_case_cost
    from apidistill.costs.tokens import TokenCounter

    teacher = {
        "provider": "openai",
        "model": "gpt-4.1-mini",
        "base_url": "https://gateway.example.com/v1",
        "price": {"input_per_mtok": 1, "output_per_mtok": 2},
    }
    reqs = make_requests(["订单 778812 没有收到瑜伽垫。" * 40, "Où est ma tasse ? 😀" * 30])
    est = estimate(run_config(teacher, budget="5"), reqs)
    counter = TokenCounter(run_config(teacher).teacher)
    price = ModelPrice(Decimal(1), Decimal(2))
    reserved = sum(
        (worst_case_cost(price, counter.bound(r).n, r.params.max_tokens) for r in reqs),
        Decimal(0),
    )
    assert est.usd_max == reserved
    assert est.input_tokens_bound > est.input_tokens and not est.input_exact
    assert "UTF-8 bytes" in est.input_bound_method
    assert "input worst case" in _render(est)
