"""Append-only write-ahead file: length- and checksum-framed lines.

During a harvest every record is appended here first, so a crash loses at most the record
being written. Each frame is one line ``<len:8 hex> <crc32:8 hex> <payload>\\n`` where the
payload is JSON (which never holds a raw newline). A reader checks the length, the checksum
and the newline: a frame cut short by a crash, or damaged on disk, is reported with its byte
offset and skipped whole — a half record is never returned. Reading resumes at the next
newline, so damage in the middle does not hide the frames after it.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["WalDamage", "WalFile", "WalScan", "frame", "scan_wal"]

_HEADER = 18  # 8 hex + space + 8 hex + space


def frame(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    crc = zlib.crc32(body)
    return b"%08x %08x " % (len(body), crc) + body + b"\n"


@dataclass(frozen=True)
class WalDamage:
    """A frame that could not be read: where it starts and why."""

    path: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: damaged frame at byte {self.offset} ({self.reason}); skipped"


@dataclass
class WalScan:
    payloads: list[dict[str, Any]] = field(default_factory=list)
    damage: list[WalDamage] = field(default_factory=list)


def _frames(data: bytes, path: str) -> Iterator[dict[str, Any] | WalDamage]:
    pos, end = 0, len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        line_end = end if nl < 0 else nl
        line = data[pos:line_end]
        problem = _check(line, nl < 0)
        if isinstance(problem, str):
            yield WalDamage(path, pos, problem)
        else:
            yield problem
        pos = line_end + 1


def _check(line: bytes, unterminated: bool) -> dict[str, Any] | str:
    if unterminated:
        return f"truncated: {len(line)} bytes without an end of line (interrupted write?)"
    if len(line) < _HEADER or line[8:9] != b" " or line[17:18] != b" ":
        return "no frame header"
    try:
        size, crc = int(line[:8], 16), int(line[9:17], 16)
    except ValueError:
        return "unreadable frame header"
    body = line[_HEADER:]
    if len(body) != size:
        return f"length {len(body)} differs from the header's {size}"
    if zlib.crc32(body) != crc:
        return "checksum mismatch"
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "payload is not JSON"
    if not isinstance(payload, dict):
        return "payload is not an object"
    return payload


def scan_wal(path: Path) -> WalScan:
    """Every intact payload of a write-ahead file, plus each damaged frame's location."""
    scan = WalScan()
    for item in _frames(path.read_bytes(), str(path)):
        if isinstance(item, WalDamage):
            scan.damage.append(item)
        else:
            scan.payloads.append(item)
    return scan


class WalFile:
    """An open write-ahead file; ``append`` returns once the frame is handed to the OS and
    ``sync`` makes everything appended so far durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = path.open("ab")
        self.count = 0

    def append(self, payload: dict[str, Any]) -> None:
        self._fh.write(frame(payload))
        self._fh.flush()
        self.count += 1

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()
