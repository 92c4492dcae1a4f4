"""Eval test helpers: a scriptable OpenAI-compatible server on 127.0.0.1, record builders and a
headless-Chromium renderer for the report.

The fake server is a real HTTP server (uvicorn in a thread) so the runner is exercised through
the official ``openai`` SDK exactly as in production; faults (503s, a server that shuts down
mid-run) are server behaviour, not patched clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from apidistill.records import Message, Record, Usage

Responder = Callable[[list[dict]], str]


@dataclass
class FakeServer:
    """Answers chat completions with ``respond(messages)``; after ``fail_after`` answers it
    returns 503 (``fail_mode="503"``) or shuts itself down (``"shutdown"``); the first
    ``fail_first`` requests get a 503 before it answers normally."""

    respond: Responder
    fail_after: int | None = None
    fail_mode: str = "503"
    fail_first: int = 0  # the first requests answer 503 (a transient fault), then it recovers
    confidence: float = 0.8
    delay_s: float = 0.0
    served: int = 0
    seen: list[list[dict]] = field(default_factory=list)
    base_url: str = ""
    server: Any = None

    def app(self) -> Any:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            if self.fail_first > 0:
                self.fail_first -= 1
                return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
            if self.fail_after is not None and self.served >= self.fail_after:
                if self.fail_mode == "shutdown":
                    self.server.should_exit = True
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.served += 1
            self.seen.append(body["messages"])
            text = self.respond(body["messages"])
            return _chat_body(body, text, self.served, self.confidence)

        return app


def _chat_body(body: dict, text: str, n: int, confidence: float) -> dict:
    words = sum(len(m["content"].split()) for m in body["messages"])
    out_words = len(text.split())
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": text},
    }
    if body.get("logprobs"):
        lp = math.log(confidence)
        choice["logprobs"] = {
            "content": [{"token": text, "logprob": lp, "bytes": None, "top_logprobs": []}]
        }
    return {
        "id": f"cmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [choice],
        "usage": {
            "prompt_tokens": words,
            "completion_tokens": out_words,
            "total_tokens": words + out_words,
        },
    }


@contextlib.contextmanager
def serve_fake(fake: FakeServer) -> Iterator[FakeServer]:
    """Run ``fake`` on a free loopback port for the duration of the block."""
    from apidistill.testing.inprocess import serve_in_thread

    with serve_in_thread(fake.app(), log_level="error", lifespan="off") as (root, server):
        fake.server = server
        fake.base_url = f"{root}/v1"
        yield fake


# --------------------------------------------------------------------------- records


def make_record(
    rid: str,
    ticket: str,
    completion: str,
    gold: str | None = None,
    *,
    split: str | None = "test",
    cost: str | None = "0.002",
    input_tokens: int = 1570,
) -> Record:
    from decimal import Decimal

    return Record(
        id=rid,
        messages=[Message(role="user", content=ticket)],
        completion=completion,
        gold=gold,
        split=split,  # type: ignore[arg-type]
        usage=Usage(input_tokens=input_tokens, output_tokens=len(completion.split())),
        cost_usd=Decimal(cost) if cost is not None else None,
    )


def answer_by_ticket(table: dict[str, str]) -> Responder:
    """A responder that looks the last user message up in ``table``."""

    def respond(messages: list[dict]) -> str:
        return table[messages[-1]["content"]]

    return respond


# --------------------------------------------------------------------------- chromium

_PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  window.__errs.push((e.target && e.target.tagName ? e.target.tagName + ' failed' : e.message));
}, true);
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (i) {
    return i.complete ? i.naturalWidth : -1; });
  var d = document.createElement('div');
  d.id = 'probe';
  d.setAttribute('data-img-widths', widths.join(','));
  d.setAttribute('data-errors', window.__errs.join('|'));
  document.body.appendChild(d);
});
</script>"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Rendered:
    dom: str
    screenshot: Path
    stderr: str


def render_in_chromium(html_path: Path, work: Path) -> Rendered:
    """Render a copy of the report with a probe script (the report's own CSP forbids scripts,
    so the copy's policy is widened to allow exactly this inline probe)."""
    exe = chromium_binary()
    assert exe is not None
    text = html_path.read_text(encoding="utf-8")
    text = text.replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    )
    text = text.replace("</head>", _PROBE + "\n</head>", 1)
    probe_page = work / "probe.html"
    probe_page.write_text(text, encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={work / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    shot = work / "report.png"
    url = probe_page.resolve().as_uri()
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    shot_run = subprocess.run(
        [
            exe,
            *flags,
            "--window-size=1200,4400",
            f"--screenshot={shot}",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Rendered(dom.stdout, shot, dom.stderr + shot_run.stderr)
