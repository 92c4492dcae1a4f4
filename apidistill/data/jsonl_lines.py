"""Read a JSONL file line by line, turning each unusable line into a problem value.

The prompt reader (:mod:`apidistill.data.prompts`) and the importers
(:mod:`apidistill.importers.base`) both report bad input as ``file:line`` so that
``skip_invalid`` can count a bad line instead of stopping; the decoding and parsing rules
(UTF-8, a BOM on the first line, blank lines skipped, the JSON error's message and column)
live here once so both name the same line for the same fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["jsonl_lines"]

_ARRAY_HINT = "looks like a JSON array; write one JSON object per line (JSONL)"


def jsonl_lines(
    path: Path, problem: Callable[[str], Exception], *, array_hint: bool = False
) -> Iterator[tuple[int, Any]]:
    """``(line, JSON value)`` for every non-blank line of ``path`` (lines count from 1).

    A line that is not UTF-8 or not JSON yields ``problem(message)`` in place of the value,
    so the caller decides whether it stops the read or is skipped and counted. With
    ``array_hint`` a first line of just ``[`` is reported as a JSON array rather than as
    invalid JSON (the most common wrong shape of a prompt file).
    """
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, problem(f"not UTF-8 text (byte {exc.start})")
                continue
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            if array_hint and lineno == 1 and text.strip() == "[":
                yield lineno, problem(_ARRAY_HINT)
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as exc:
                yield lineno, problem(f"not valid JSON: {exc.msg} (column {exc.colno})")
            except RecursionError:
                yield lineno, problem("not valid JSON: nested too deeply")
