"""Split mode: a share of traffic is answered by the student, sticky per user or session.

The key is the ``X-Apidistill-User`` header (configurable), else the body's ``user``
(OpenAI) or ``metadata.user_id`` (Anthropic); a request without one is drawn at random. A key
maps to a fixed point in [0, 1) (SHA-256), and goes to the student when that point is below
the share, so raising the share (``apidistill proxy promote``) only moves more users over —
nobody flips back and forth — and ``rollback`` (share 0) sends everyone to the teacher. The
share changes at run time through ``POST /admin/split``, accepted from loopback addresses only.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

__all__ = ["split_key", "to_student"]


def split_key(headers: Any, body: dict[str, Any], header: str) -> str | None:
    value = headers.get(header.lower())  # lower-case names: a dict or Starlette Headers
    if value:
        return str(value)
    if isinstance(body.get("user"), str) and body["user"]:
        return body["user"]
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str) and meta["user_id"]:
        return meta["user_id"]
    return None


def to_student(key: str | None, share: float, rng: random.Random) -> bool:
    """Whether this request goes to the student at ``share`` (sticky for a key)."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    if key is None:
        return rng.random() < share
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return point < share
