"""Dataset card and the `apidistill data` commands on a real dataset folder."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import make_record
from typer.testing import CliRunner

from apidistill.cli.data import data_app
from apidistill.config import BalanceConfig
from apidistill.data.balance import balance
from apidistill.data.card import build_card
from apidistill.data.store import load_records, save_records
from apidistill.errors import ConfigError

runner = CliRunner()


def _dataset(folder: Path) -> list:
    recs = []
    for i in range(40):
        r = make_record(i, label="a" if i < 30 else "b", t=4 if i < 5 else 0, k=3)
        if i == 7:
            r = r.model_copy(update={"finish_reason": "length"})
        if i == 8:
            r = r.model_copy(update={"completion": "I'm sorry, I can't help with that"})
        if i in (9, 10):
            r = r.model_copy(update={"cost_usd": Decimal("0.25")})
        recs.append(r)
    save_records(recs, folder)
    return recs


def test_card_markdown_and_json(tmp_path: Path) -> None:
    recs = _dataset(tmp_path / "ds")
    bal = balance(recs, BalanceConfig(max_per_class=10))
    card = build_card(
        recs,
        name="support-intents",
        drops_by_reason={"refusal": 2},
        dedupe_stats={"exact_removed": 1, "near_removed": 0},
        balance=bal,
        cost_totals={"harvest": Decimal("1.50")},
        teachers=[{"provider": "openai", "model": "gpt-x"}],
        policy=[{"decision": "allow", "clause": "§2(c)"}],
    )
    j = card.to_json()
    assert j["records"] == 40 and j["labels"] == {"a": 30, "b": 10}
    assert j["tokens"]["records_with_logprobs"] == 5 and j["tokens"]["logprob_positions"] == 20
    assert j["tokens"]["token_ids_known_share"] == 1.0
    assert j["cost"]["records"] == {"sum_usd": "0.50", "records_with_unknown_cost": 38}
    assert j["provenance"]["teachers"] == {"openai:gpt-x": 40}
    md = card.to_markdown()
    assert "| refusal | 2 |" in md and "| harvest | $1.50 |" in md and "§2(c)" in md
    assert "| a | 30 | 10 |" in md
    md_path, js_path = card.write(tmp_path / "card")
    assert json.loads(js_path.read_text())["name"] == "support-intents"
    assert md_path.read_text().startswith("# Dataset card: support-intents")


def test_cli_inspect_filter_balance_split_card(tmp_path: Path) -> None:
    _dataset(tmp_path / "ds")
    r = runner.invoke(data_app, ["inspect", str(tmp_path / "ds"), "--show", "1"])
    assert r.exit_code == 0, r.output
    assert "records in shards" in r.output and "│ a " in r.output and "r0" in r.output

    r = runner.invoke(data_app, ["filter", str(tmp_path / "ds"), "-o", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert "truncated" in r.output and "refusal" in r.output and "kept 38 of 40" in r.output
    assert len(load_records(tmp_path / "f")) == 38

    r = runner.invoke(
        data_app,
        ["balance", str(tmp_path / "f"), "-o", str(tmp_path / "b"), "--target", "a=0.5,b=0.5"],
    )
    assert r.exit_code == 0, r.output
    assert "under-represented" in r.output
    labels = [x.label for x in load_records(tmp_path / "b")]
    assert labels.count("a") == labels.count("b") == 10

    r = runner.invoke(
        data_app,
        [
            "split",
            str(tmp_path / "b"),
            "-o",
            str(tmp_path / "s"),
            "--train",
            "0.8",
            "--test",
            "0.2",
            "--seed",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(load_records(tmp_path / "s", split="test")) == 4

    r = runner.invoke(data_app, ["card", str(tmp_path / "s"), "--name", "demo"])
    assert r.exit_code == 0, r.output
    assert "| train | 16 |" not in (tmp_path / "s" / "README.md").read_text()
    assert "- train: 16" in (tmp_path / "s" / "README.md").read_text()

    r = runner.invoke(data_app, ["split", str(tmp_path / "b"), "-o", str(tmp_path / "s")])
    assert isinstance(r.exception, Exception) and "already holds" in str(r.exception)


def test_cli_bad_flags_are_config_errors(tmp_path: Path) -> None:
    _dataset(tmp_path / "ds")
    r = runner.invoke(
        data_app, ["balance", str(tmp_path / "ds"), "-o", str(tmp_path / "x"), "--target", "a:0.5"]
    )
    assert isinstance(r.exception, ConfigError) and "--target" in str(r.exception)
    r = runner.invoke(data_app, ["inspect", str(tmp_path / "missing")])
    assert "not found" in str(r.exception)


@pytest.mark.parametrize("flag", [["--codec", "zip"]])
def test_cli_unknown_codec(tmp_path: Path, flag: list[str]) -> None:
    _dataset(tmp_path / "ds")
    r = runner.invoke(data_app, ["filter", str(tmp_path / "ds"), "-o", str(tmp_path / "f"), *flag])
    assert isinstance(r.exception, ConfigError) and "codec" in str(r.exception)
