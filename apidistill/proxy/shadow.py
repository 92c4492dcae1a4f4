"""Shadow mode: the student answers the same request in the background; agreement with the
teacher's answer accumulates per route.

The client never waits on the student: the shadow call starts after the teacher's answer is
complete, as a background task on the proxy's loop, non-streaming, with the student's model
name. Agreement is :func:`apidistill.eval.metrics.exact_match` of the answer texts
(case- and whitespace-insensitive; a tool call is compared as its name and canonical JSON
arguments), the task score is ROUGE-L (:func:`apidistill.eval.metrics.rouge_l`), both as
``apidistill eval`` computes them. A student error or timeout counts as a shadow error, never
as disagreement.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from apidistill.eval.metrics import exact_match, rouge_l
from apidistill.proxy.upstream import Upstream, UpstreamError

__all__ = ["ShadowStats", "answer_text", "run_shadow"]

log = logging.getLogger("apidistill.proxy")


@dataclass
class ShadowStats:
    requests: int = 0
    agreed: int = 0
    errors: int = 0
    score_sum: float = 0.0

    def view(self) -> dict[str, Any]:
        done = self.requests - self.errors
        return {
            "requests": self.requests,
            "errors": self.errors,
            "agreement": round(self.agreed / done, 4) if done else None,
            "task_score_rouge_l": round(self.score_sum / done, 4) if done else None,
        }


def answer_text(api: str, answer: dict[str, Any] | None) -> str | None:
    """The text compared: the message text, or its tool calls as canonical JSON."""
    if not answer:
        return None
    if api == "anthropic":
        parts = []
        for b in answer.get("content") or []:
            if b.get("type") == "text":
                parts.append(b.get("text", ""))
            elif b.get("type") == "tool_use":
                parts.append(json.dumps({"tool": b.get("name"), "input": b.get("input")},
                                        sort_keys=True))  # fmt: skip
        return "".join(parts)
    choices = answer.get("choices") or []
    if not choices:
        return None
    msg = choices[0].get("message") or {}
    calls = msg.get("tool_calls")
    if calls:
        out = []
        for c in calls:
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = fn.get("arguments")
            out.append({"tool": fn.get("name"), "input": args})
        return json.dumps(out, sort_keys=True)
    return msg.get("content") or ""


async def run_shadow(
    upstream: Upstream,
    url: str,
    api: str,
    body: dict[str, Any],
    headers: dict[str, str],
    teacher_answer: dict[str, Any] | None,
    model: str | None,
    timeout_s: float,
    stats: ShadowStats,
) -> None:
    """One shadow call; updates ``stats``; never raises."""
    stats.requests += 1
    want = answer_text(api, teacher_answer)
    send = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    if model:
        send["model"] = model
    try:
        resp = await asyncio.wait_for(
            upstream.send("POST", url, content=json.dumps(send).encode(), headers=headers,
                          params=None),
            timeout_s,
        )  # fmt: skip
        try:
            data = await asyncio.wait_for(resp.read(), timeout_s)
        finally:
            await resp.close()
        got = answer_text(api, json.loads(data)) if resp.status == 200 else None
    except (TimeoutError, UpstreamError, ValueError) as exc:
        log.warning("shadow call failed: %s", exc)
        got = None
    if got is None or want is None:
        stats.errors += 1
        return
    stats.agreed += int(exact_match(got, want))
    stats.score_sum += rouge_l(got, want)
