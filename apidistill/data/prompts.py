"""Load task inputs (prompts) from JSONL, CSV or Parquet into validated rows.

The pipeline turns each :class:`PromptRow` into a teacher request, so every row must be
checked *before* money is spent: a bad line fails with the file and line number, or — with
``skip_invalid`` — is counted and described in :attr:`PromptLoad.problems` so the user sees
what was left out. Ids are stable across runs (the id field, else a hash of the input) because
the harvest cache and resume-by-id depend on them.

A chat input (a list of ``{role, content}`` messages in ``input_field``) needs JSONL or
Parquet; CSV cells are always plain text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from apidistill.data.jsonl_lines import jsonl_lines
from apidistill.errors import DataError
from apidistill.records import Message

__all__ = [
    "SKIP_INVALID_HINT",
    "PromptFormat",
    "PromptLoad",
    "PromptRow",
    "detect_format",
    "load_prompt_rows",
    "skipped_report",
]

PromptFormat = Literal["auto", "jsonl", "csv", "parquet"]

_SUFFIXES: dict[str, Literal["jsonl", "csv", "parquet"]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_MAX_PROBLEMS = 1000  # enough to act on; a million-line bad file must not exhaust memory
SKIP_INVALID_HINT = (
    "fix the line, or skip bad lines and report how many: pass --skip-invalid to the command "
    "(harvest, run, estimate) or set prompts.skip_invalid: true in the run file"
)


@dataclass(frozen=True)
class PromptRow:
    """One task input. ``input`` is plain text or a chat (list of messages)."""

    id: str
    input: str | list[Message]
    label: str | None = None
    gold: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # 1-based line (JSONL/CSV) or row (Parquet) in the source file


@dataclass
class PromptLoad:
    rows: list[PromptRow]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


class _RowProblem(Exception):
    """A row cannot be used; carries the message without file/line (added by the caller)."""


def detect_format(path: Path) -> Literal["jsonl", "csv", "parquet"]:
    """The file format from the suffix; an unknown suffix is an error naming the fix."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the suffix {path.suffix!r}",
            file=str(path),
            hint="name the file .jsonl, .csv or .parquet, or set prompts.format",
        )
    return fmt


def load_prompt_rows(
    path: str | Path,
    *,
    format: PromptFormat = "auto",
    input_field: str = "text",
    id_field: str | None = None,
    label_field: str | None = None,
    gold_field: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    label_set: Collection[str] | None = None,
) -> PromptLoad:
    """Read and validate every row of a prompt file.

    Raises :class:`DataError` naming the file and line of the first bad row, unless
    ``skip_invalid`` is set: then bad rows are counted in ``skipped`` and described in
    ``problems``. ``label_set`` (optional) rejects labels outside the allowed classes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("prompt file not found", file=str(p), hint="check prompts.path")
    fmt = detect_format(p) if format == "auto" else format
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt]
    builder = _RowBuilder(input_field, id_field, label_field, gold_field, label_set)
    load = PromptLoad(rows=[])
    for line, raw in reader(p):
        if limit is not None and len(load.rows) >= limit:
            break
        try:
            if isinstance(raw, _RowProblem):
                raise raw
            row = builder.build(line, raw)
        except _RowProblem as exc:
            if not skip_invalid:
                raise DataError(
                    str(exc),
                    file=str(p),
                    line=line,
                    hint=SKIP_INVALID_HINT,
                ) from None
            load.skipped += 1
            if len(load.problems) < _MAX_PROBLEMS:
                load.problems.append(f"{p}:{line}: {exc}")
            continue
        load.rows.append(row)
    if not load.rows and not load.skipped:
        raise DataError("no prompt rows in the file", file=str(p), hint="is the file empty?")
    return load


def skipped_report(skipped: int, problems: Sequence[str], *, show: int = 5) -> str:
    """What a ``skip_invalid`` load left out: the count, then the first ``show`` problems
    (``file:line: reason``), so the user can fix them and re-run."""
    lines = [f"prompts: skipped {skipped} invalid row{'' if skipped == 1 else 's'}"]
    lines += [f"  {p}" for p in problems[:show]]
    if skipped > min(show, len(problems)):
        lines.append(f"  … and {skipped - min(show, len(problems))} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- row validation


class _RowBuilder:
    """Turns one raw mapping into a :class:`PromptRow`, keeping ids unique and stable."""

    def __init__(
        self,
        input_field: str,
        id_field: str | None,
        label_field: str | None,
        gold_field: str | None,
        label_set: Collection[str] | None,
    ) -> None:
        self.input_field, self.id_field = input_field, id_field
        self.label_field, self.gold_field = label_field, gold_field
        self.label_set = set(label_set) if label_set is not None else None
        self._seen: dict[str, int] = {}  # id → line of first use

    def build(self, line: int, raw: Any) -> PromptRow:
        if not isinstance(raw, dict):
            raise _RowProblem(f"expected an object with fields, got {_kind(raw)}")
        inp = _parse_input(raw, self.input_field)
        label = self._label(raw)
        gold = _optional_text(raw, self.gold_field, "gold")
        used = {
            f for f in (self.input_field, self.id_field, self.label_field, self.gold_field) if f
        }
        metadata = {k: v for k, v in raw.items() if k not in used}
        row_id = self._row_id(raw, inp, line)
        return PromptRow(row_id, inp, label, gold, metadata, line)

    def _label(self, raw: dict[str, Any]) -> str | None:
        label = _optional_text(raw, self.label_field, "label")
        if label is not None and self.label_set is not None and label not in self.label_set:
            allowed = ", ".join(sorted(self.label_set))
            raise _RowProblem(f"label {label!r} is not one of the allowed labels ({allowed})")
        return label

    def _row_id(self, raw: dict[str, Any], inp: str | list[Message], line: int) -> str:
        if self.id_field is not None:
            if self.id_field not in raw or raw[self.id_field] in (None, ""):
                raise _RowProblem(f"missing id field {self.id_field!r}")
            value = raw[self.id_field]
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise _RowProblem(f"id field {self.id_field!r} must be text or an integer")
            rid = str(value)
            if rid in self._seen:
                raise _RowProblem(f"duplicate id {rid!r} (first used on line {self._seen[rid]})")
            self._seen[rid] = line
            return rid
        base = input_hash(inp)
        rid, n = base, 1
        while rid in self._seen:  # same input twice: deterministic suffix by file order
            n += 1
            rid = f"{base}-{n}"
        self._seen[rid] = line
        return rid


def input_hash(inp: str | list[Message]) -> str:
    """Stable id of an input: 16 hex chars of SHA-256 over its canonical JSON."""
    body = inp if isinstance(inp, str) else [m.model_dump() for m in inp]
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _parse_input(raw: dict[str, Any], name: str) -> str | list[Message]:
    if name not in raw or raw[name] is None:
        present = ", ".join(sorted(map(str, raw))) or "none"
        raise _RowProblem(f"missing input field {name!r} (fields present: {present})")
    value = raw[name]
    if isinstance(value, str):
        if not value.strip():
            raise _RowProblem(f"input field {name!r} is empty")
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise _RowProblem(f"input field {name!r} is an empty message list")
        try:
            return [Message.model_validate(m) for m in value]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise _RowProblem(
                f"input field {name!r} is not a list of {{role, content}} messages "
                f"({where}: {first['msg']})"
            ) from None
    raise _RowProblem(
        f"input field {name!r} must be text or a list of messages, got {_kind(value)}"
    )


def _optional_text(raw: dict[str, Any], name: str | None, what: str) -> str | None:
    """Labels/gold as text: numbers and booleans are stringified, structures JSON-encoded
    (gold only), anything else is an error."""
    if name is None:
        return None
    if name not in raw or raw[name] is None:
        raise _RowProblem(f"missing {what} field {name!r}")
    value = raw[name]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if what == "gold" and isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    raise _RowProblem(f"{what} field {name!r} must be text or a number, got {_kind(value)}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", type(None): "null", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- readers

_Raw = Any  # a mapping, or a _RowProblem for a line that could not be parsed


def _jsonl_rows(path: Path) -> Iterator[tuple[int, _Raw]]:
    yield from jsonl_lines(path, _RowProblem, array_hint=True)


def _csv_rows(path: Path) -> Iterator[tuple[int, _Raw]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not UTF-8 text (byte {exc.start})",
            file=str(path),
            line=line,
            hint="save the CSV as UTF-8",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"unreadable CSV header: {exc}", file=str(path), line=1) from None
    names = [h.strip() for h in header]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise DataError(
            f"CSV header has empty or repeated column names: {names}", file=str(path), line=1
        )
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, _RowProblem(f"unreadable CSV row: {exc}")
            return  # the reader cannot resynchronize after a broken quote
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            yield start, _RowProblem(f"has {len(cells)} cells but the header has {len(names)}")
            continue
        yield start, dict(zip(names, cells, strict=True))


def _parquet_rows(path: Path) -> Iterator[tuple[int, _Raw]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"not a readable Parquet file ({exc})", file=str(path), hint="re-export the file"
        ) from None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for item in batch.to_pylist():
                row += 1
                yield row, item
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"Parquet data is corrupt after row {row} ({exc})", file=str(path), line=row + 1
        ) from None
