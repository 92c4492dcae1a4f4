"""Prompt files: JSONL/CSV/Parquet rows, located errors, skip counts, stable ids, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.data.prompts import load_prompt_rows
from apidistill.errors import DataError
from apidistill.records import Message


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_rows_with_label_gold_metadata(tmp_path: Path) -> None:
    f = _jsonl(
        tmp_path / "p.jsonl",
        [
            json.dumps({"text": "hello", "label": "pos", "gold": {"a": 1}, "src": "x"}),
            json.dumps({"text": "bye", "label": 3, "gold": "g"}),
        ],
    )
    load = load_prompt_rows(f, label_field="label", gold_field="gold")
    assert [r.input for r in load.rows] == ["hello", "bye"]
    assert [r.label for r in load.rows] == ["pos", "3"]
    assert load.rows[0].gold == '{"a": 1}'
    assert load.rows[0].metadata == {"src": "x"}
    assert load.rows[1].line == 2


def test_messages_input(tmp_path: Path) -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    f = _jsonl(tmp_path / "p.jsonl", [json.dumps({"chat": msgs})])
    row = load_prompt_rows(f, input_field="chat").rows[0]
    assert row.input == [Message(role="system", content="s"), Message(role="user", content="u")]


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "p.jsonl", ['{"text": "a"}', "{not json", '{"text": "c"}'])
    with pytest.raises(DataError) as err:
        load_prompt_rows(f)
    assert err.value.line == 2 and err.value.file == str(f)
    assert "p.jsonl:2" in str(err.value) and "not valid JSON" in str(err.value)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"other": "a"}', "missing input field 'text'"),
        ('{"text": 5}', "must be text or a list of messages"),
        ('{"text": [{"role": "robot", "content": "x"}]}', "not a list of {role, content}"),
        ('{"text": "   "}', "is empty"),
        ('["a list"]', "expected an object"),
        ('{"text": "a", "label": {"x": 1}}', "label field 'label' must be text"),
        ('{"text": "a", "label": "maybe"}', "not one of the allowed labels"),
    ],
)
def test_row_problems_are_located(tmp_path: Path, line: str, needle: str) -> None:
    f = _jsonl(tmp_path / "p.jsonl", ['{"text": "ok", "label": "yes"}', line])
    with pytest.raises(DataError) as err:
        load_prompt_rows(f, label_field="label", label_set={"yes", "no"})
    assert err.value.line == 2
    assert needle in str(err.value)


def test_skip_invalid_counts_and_describes(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "p.jsonl", ['{"text": "a"}', "garbage", '{"x": 1}', '{"text": "d"}'])
    load = load_prompt_rows(f, skip_invalid=True)
    assert [r.input for r in load.rows] == ["a", "d"]
    assert load.skipped == 2
    assert load.problems[0].endswith("not valid JSON: Expecting value (column 1)")
    assert ":3:" in load.problems[1]


def test_ids_are_stable_and_unique(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "p.jsonl", ['{"text": "same"}', '{"text": "same"}', '{"text": "b"}'])
    a = [r.id for r in load_prompt_rows(f).rows]
    b = [r.id for r in load_prompt_rows(f).rows]
    assert a == b and len(set(a)) == 3
    assert a[1] == a[0] + "-2"


def test_id_field_duplicates_are_errors(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "p.jsonl", ['{"id": 1, "text": "a"}', '{"id": "1", "text": "b"}'])
    with pytest.raises(DataError, match="duplicate id '1' \\(first used on line 1\\)"):
        load_prompt_rows(f, id_field="id")


def test_limit(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "p.jsonl", [json.dumps({"text": f"t{i}"}) for i in range(10)])
    assert len(load_prompt_rows(f, limit=3).rows) == 3


def test_csv_rows_and_multiline_cells(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text('text,label\n"two\nlines",a\nplain,b\nshort\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_prompt_rows(f, label_field="label")
    assert err.value.line == 5  # the quoted cell spans lines 2-3
    load = load_prompt_rows(f, label_field="label", skip_invalid=True)
    assert [(r.input, r.label, r.line) for r in load.rows] == [
        ("two\nlines", "a", 2),
        ("plain", "b", 4),
    ]


def test_parquet_rows(tmp_path: Path) -> None:
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"q": ["a", None, "c"], "y": [1, 2, 3]}), f)
    with pytest.raises(DataError) as err:
        load_prompt_rows(f, input_field="q", label_field="y")
    assert err.value.line == 2
    load = load_prompt_rows(f, input_field="q", label_field="y", skip_invalid=True)
    assert [(r.input, r.label) for r in load.rows] == [("a", "1"), ("c", "3")]


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="suffix"):
        load_prompt_rows(tmp_path / "p.txt")
    with pytest.raises(DataError, match="not found"):
        load_prompt_rows(tmp_path / "nope.jsonl")


_FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _check_garbage(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    for skip in (False, True):
        try:
            load = load_prompt_rows(path, skip_invalid=skip, label_field=None)
        except DataError as exc:
            assert exc.file == str(path)
            continue
        assert load.skipped >= 0
        assert all(isinstance(r.input, str | list) for r in load.rows)


@_FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_jsonl_garbage(tmp_path: Path, data: bytes) -> None:
    _check_garbage(tmp_path / "f.jsonl", data)


@_FUZZ
@given(
    data=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds(
                json.dumps,
                st.recursive(
                    st.none() | st.integers() | st.text(max_size=5),
                    lambda c: (
                        st.lists(c, max_size=3)
                        | st.dictionaries(st.sampled_from(["text", "x"]), c, max_size=3)
                    ),
                ),
            ),
        ),
        max_size=6,
    )
)
def test_fuzz_jsonl_structured(tmp_path: Path, data: list[str]) -> None:
    _check_garbage(tmp_path / "f.jsonl", "\n".join(data).encode())


@_FUZZ
@given(data=st.text(alphabet=st.sampled_from('text,"\n\r\x00ab;'), max_size=200))
def test_fuzz_csv_garbage(tmp_path: Path, data: str) -> None:
    _check_garbage(tmp_path / "f.csv", data.encode())


@_FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_parquet_garbage(tmp_path: Path, data: bytes) -> None:
    _check_garbage(tmp_path / "f.parquet", data)


@_FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_fuzz_truncated_parquet(tmp_path: Path, cut: int) -> None:
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)]}), src)
    blob = src.read_bytes()
    _check_garbage(tmp_path / "f.parquet", blob[: cut % (len(blob) + 1)])
