"""Importers of local files: OpenAI fine-tuning JSONL, Batch outputs (OpenAI, Anthropic), the
proxy's captures and the generic chat JSONL; bad lines; the dataset they write."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from apidistill.config import ImportConfig, PolicyConfig
from apidistill.data.store import load_records
from apidistill.errors import DataError, PolicyDenied
from apidistill.importers import import_records, load_source, write_import
from apidistill.importers.batch_output import import_anthropic_batch, import_openai_batch
from apidistill.importers.captures import import_captures
from apidistill.importers.generic import import_generic_chat
from apidistill.importers.openai_finetune import import_finetune_file

FIX = Path(__file__).parent / "fixtures"
FT = "ft:gpt-4.1-mini-2025-04-14:acme::B1x2y3"


def test_finetune_every_weighted_assistant_turn_with_its_context() -> None:
    load = import_finetune_file(FIX / "finetune.jsonl", model=FT)
    # line 1: one turn; line 2: the weight-0 "Paris" is context only; line 3: a tool call;
    # line 4: both the tool call and the answer after the tool result are trained on
    assert [(x.line, x.metadata.get("turn", 0)) for x in load.items] == [
        (1, 0), (2, 1), (3, 0), (4, 0), (4, 1),
    ]  # fmt: skip
    single, sarcastic, call, _call2, after_tool = load.items
    assert single.completion == "order_id: 5041\nproduct: blue kettle"
    assert [m.role for m in single.messages] == ["system", "user"]
    assert sarcastic.completion == "Paris, as if everyone doesn't know that already."
    assert [m.content for m in sarcastic.messages][2:] == ["Paris", "Can you be more sarcastic?"]
    assert json.loads(call.completion) == {
        "tool_call": {
            "name": "get_current_weather",
            "arguments": {"location": "San Francisco, USA", "format": "celsius"},
        }
    }
    assert call.metadata["tools"][0]["function"]["name"] == "get_current_weather"
    assert call.finish_reason == "tool_calls"
    assert json.loads(after_tool.messages[-1].content) == {
        "tool_result": {"id": "call_1", "content": {"temperature": 21}}
    }
    assert after_tool.completion == "It is 21 °C in Paris."
    assert {(x.provider, x.model) for x in load.items} == {("openai", FT)}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "not valid JSON"),
        ('{"prompt": "a", "completion": "b"}', "legacy format"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}', "weight must be 0 or 1"),
        ('{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, {"role": "assistant", "content": "y"}]}', "not text"),
        ('{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}', "role is 'wizard'"),
    ],
)  # fmt: skip
def test_bad_finetune_line_names_file_line_and_the_switch(
    tmp_path: Path, line: str, why: str
) -> None:
    good = (FIX / "finetune.jsonl").read_text().splitlines()[0]
    path = tmp_path / "train.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        import_finetune_file(path, model=FT)
    assert f"{path}:2" in str(exc.value) and why in str(exc.value)
    assert "--skip-invalid" in str(exc.value)
    load = import_finetune_file(path, model=FT, skip_invalid=True)
    assert len(load.items) == 2 and load.skipped == 1
    assert load.problems[0].startswith(f"{path}:2: ")


def test_finetune_needs_the_model_that_wrote_it() -> None:
    with pytest.raises(DataError, match="--model"):
        import_finetune_file(FIX / "finetune.jsonl", model="")


def test_openai_batch_output_joined_with_its_input_failed_counted_apart() -> None:
    load = import_openai_batch(
        FIX / "openai_batch_output.jsonl", requests=FIX / "openai_batch_input.jsonl"
    )
    assert [x.item_id for x in load.items] == ["request-2", "request-1"]
    second = load.items[0]
    assert second.messages[0].content == "You are an unhelpful assistant."
    assert second.completion == "Hello."
    assert second.model == "gpt-4.1-mini-2025-04-14" and second.model_version == "fp_123"
    assert (second.usage.input_tokens, second.usage.output_tokens) == (22, 2)
    assert second.metadata["batch_request_id"] == "req_123"
    assert load.failed == 1 and "request-3" in load.problems[0] and "HTTP 400" in load.problems[0]
    assert load.skipped == 0


def test_batch_output_needs_its_input_file() -> None:
    with pytest.raises(DataError, match="--requests"):
        import_openai_batch(FIX / "openai_batch_output.jsonl", requests=None)


def test_batch_line_whose_custom_id_is_not_in_the_input(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text((FIX / "openai_batch_input.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError) as exc:
        import_openai_batch(FIX / "openai_batch_output.jsonl", requests=inp)
    assert "openai_batch_output.jsonl:1" in str(exc.value)
    assert "'request-2' is not in the input file" in str(exc.value)


def test_anthropic_batch_results() -> None:
    load = import_anthropic_batch(
        FIX / "anthropic_batch_results.jsonl", requests=FIX / "anthropic_batch_requests.jsonl"
    )
    (ex,) = load.items
    assert ex.item_id == "my-second-request" and ex.provider == "anthropic"
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "Be brief."),
        ("user", "Hi again, friend"),
    ]
    assert ex.completion == "Hello again! It's nice to see you."
    assert ex.finish_reason == "stop" and ex.usage.output_tokens == 36
    assert ex.model == "claude-opus-4-1-20250805"
    assert load.failed == 2
    assert any("errored (Validation error text)" in p for p in load.problems)
    assert any("expired" in p for p in load.problems)


@pytest.fixture
def no_proxy_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read capture files as JSONL of the documented records (the proxy not installed)."""
    from apidistill.importers import captures

    monkeypatch.setattr(captures, "_proxy_reader", lambda: None)


def test_captures_of_both_apis_keep_logprobs_route_and_cost(no_proxy_reader: None) -> None:
    load = import_captures(FIX / "captures.jsonl")
    oa, an = load.items
    assert oa.item_id == "cap-0001" and oa.provider == "openai" and oa.model == "gpt-4.1-mini"
    assert oa.completion == "order_id: 9"
    assert oa.logprobs is not None and [t.token for t in oa.logprobs] == ["order", "_id: 9"]
    assert [a.token for a in oa.logprobs[0].top] == ["order", "Order"]
    assert oa.cost_usd == Decimal("0.0000096")
    assert oa.metadata["route"] == "tickets" and oa.metadata["sampling"] == {"temperature": 0}
    assert an.provider == "anthropic" and an.logprobs is None
    assert [(m.role, m.content) for m in an.messages] == [
        ("system", "Extract."),
        ("user", "order 10 green pen"),
    ]


def test_captures_given_as_objects_of_the_documented_shape() -> None:
    """The proxy hands CapturedExchange objects (attributes, not keys): same result."""
    from types import SimpleNamespace

    rows = [json.loads(x) for x in (FIX / "captures.jsonl").read_text().splitlines()]
    load = import_captures([SimpleNamespace(**r) for r in rows])
    assert [x.completion for x in load.items] == ["order_id: 9", "order_id: 10"]


def test_captures_path_goes_through_the_proxys_reader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the proxy installed, its iter_captures(path) is what reads the store."""
    from types import SimpleNamespace

    from apidistill.importers import captures

    rows = [json.loads(x) for x in (FIX / "captures.jsonl").read_text().splitlines()]
    seen: list[Path] = []

    def iter_captures(path: Path):  # the proxy's documented reader
        seen.append(path)
        return iter([SimpleNamespace(**r) for r in rows])

    monkeypatch.setattr(captures, "_proxy_reader", lambda: iter_captures)
    load = import_captures(tmp_path / "store")
    assert seen == [tmp_path / "store"] and len(load.items) == 2
    assert [x.line for x in load.items] == [1, 2]


def test_bad_capture_is_located(no_proxy_reader: None, tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    good = (FIX / "captures.jsonl").read_text().splitlines()[0]
    p.write_text(good + "\n" + good.replace('"api": "openai"', '"api": "gemini"') + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:2: api is 'gemini'"):
        import_captures(p)
    assert len(import_captures(p, skip_invalid=True).items) == 1


def test_generic_chat_completion_or_last_assistant_turn() -> None:
    load = import_generic_chat(FIX / "chat.jsonl", provider="openai", model="gpt-4.1-mini")
    first, second = load.items
    assert first.item_id == "t1" and first.completion == "order_id: 77\nproduct: lamp"
    assert first.metadata == {"team": "support", "label": "damaged"}
    assert second.completion == "4" and [m.role for m in second.messages] == ["system", "user"]


def test_generic_chat_unknown_field_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "a"}], "answer": "b"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: unknown field\(s\) answer"):
        import_generic_chat(p, provider="openai", model="gpt-4.1-mini")


def test_written_dataset_carries_provenance_and_decision(tmp_path: Path) -> None:
    src = ImportConfig(kind="openai_finetune", path=str(FIX / "finetune.jsonl"), model=FT)
    result = import_records([load_source(src)], PolicyConfig(use="internal"))
    out = write_import(result, tmp_path / "ds")
    recs = load_records(out)
    assert len(recs) == 5 and len({r.id for r in recs}) == 5
    (decision,) = result.decisions.values()
    assert decision.document == "OpenAI Services Agreement" and "§3.3(e)" in (decision.clause or "")
    for r in recs:
        assert r.provenance is not None and r.provenance.model == FT
        assert r.provenance.policy_decision_id == decision.id
        assert r.provenance.terms_document == "OpenAI Services Agreement"
        assert r.metadata["import"]["source"] == "openai_finetune"
        assert r.metadata["import"]["ref"] == str(FIX / "finetune.jsonl")
    assert [r.metadata["import"]["line"] for r in recs] == [1, 2, 3, 4, 4]
    summary = json.loads((out / "import.json").read_text())
    assert summary["records"] == 5 and summary["decisions"][0]["id"] == decision.id
    # importing again into the same folder is refused (nothing is replaced unasked)
    with pytest.raises(DataError, match="already holds a dataset"):
        write_import(result, out)


def test_denied_use_stops_before_anything_is_written(tmp_path: Path) -> None:
    src = ImportConfig(kind="openai_finetune", path=str(FIX / "finetune.jsonl"), model=FT)
    with pytest.raises(PolicyDenied, match=r"§3\.3\(e\)"):
        import_records([load_source(src)], PolicyConfig(use="competing"))
    assert not (tmp_path / "ds").exists()


def test_import_ids_are_stable_across_imports() -> None:
    src = ImportConfig(
        kind="openai_batch",
        path=str(FIX / "openai_batch_output.jsonl"),
        requests=str(FIX / "openai_batch_input.jsonl"),
    )
    a = import_records([load_source(src)], PolicyConfig(use="internal")).records
    b = import_records([load_source(src)], PolicyConfig(use="internal")).records
    assert (
        [r.id for r in a]
        == [r.id for r in b]
        == ["openai_batch-request-2", "openai_batch-request-1"]
    )


def test_import_folder_reads_like_a_harvested_dataset(tmp_path: Path) -> None:
    """The data commands and the terms check read an import folder as they read a harvest."""
    import subprocess
    import sys

    from apidistill.data.store import iter_provenance
    from apidistill.policy.provenance import dataset_terms

    src = ImportConfig(kind="openai_finetune", path=str(FIX / "finetune.jsonl"), model=FT)
    out = write_import(
        import_records([load_source(src)], PolicyConfig(use="internal")), tmp_path / "ds"
    )
    terms = dataset_terms(out, iter_provenance(out))
    assert terms.records == 5 and terms.undecided == 0 and terms.teachers == {f"openai:{FT}": 5}
    proc = subprocess.run(
        [sys.executable, "-m", "apidistill", "data", "split", str(out), "--out", str(tmp_path / "split")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(load_records(tmp_path / "split")) == 5
