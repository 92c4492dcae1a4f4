"""The shared JSONL line reader: the prompt reader and the importers name the same line and
the same fault for the same bad file (apidistill/data/jsonl_lines.py)."""

from __future__ import annotations

from pathlib import Path

from apidistill.data.jsonl_lines import jsonl_lines
from apidistill.importers.base import LineProblem, jsonl_objects


def _bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": \n\xff\n' + b"[" * 5000 + b"\n")
    return path


def _shape(rows: list[tuple[int, object]]) -> list[tuple[int, str]]:
    return [(n, str(v) if isinstance(v, Exception) else repr(v)) for n, v in rows]


def test_lines_numbered_from_one_with_blank_lines_skipped_and_faults_named(tmp_path: Path) -> None:
    rows = _shape(list(jsonl_lines(_bad_file(tmp_path), ValueError)))
    assert rows == [
        (1, "{'a': 1}"),
        (3, "not valid JSON: Expecting value (column 1)"),
        (4, "not UTF-8 text (byte 0)"),
        (5, "not valid JSON: nested too deeply"),
    ]


def test_importers_read_lines_as_the_shared_reader_does(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    imported = list(jsonl_objects(path))
    assert all(isinstance(v, LineProblem) for _, v in imported[1:])
    assert _shape(imported) == _shape(list(jsonl_lines(path, ValueError)))


def test_array_hint_names_a_json_array_on_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('[\n{"a": 1},\n]\n', encoding="utf-8")
    first = next(jsonl_lines(path, ValueError, array_hint=True))
    assert first[0] == 1 and "looks like a JSON array" in str(first[1])
    assert "not valid JSON" in str(next(jsonl_lines(path, ValueError))[1])
