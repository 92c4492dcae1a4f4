"""A loopback OpenAI-compatible server that fails on purpose, and counts what it billed.

``POST /v1/chat/completions`` (and ``/v1/completions``) answers deterministically in the
documented OpenAI shapes (:mod:`apidistill.testing.provider_payloads`), optionally with
logprobs and as an SSE stream, after ``latency_ms``. A seeded share of requests
(``fault_rate``) fails in one of these ways, chosen per (request, n-th arrival) so a run is
reproducible whatever the arrival order:

========================  ======================================================  ======
fault                     what the client sees                                     billed
========================  ======================================================  ======
``429``                   429 + ``retry-after-ms`` / ``retry-after``               no
``500`` ``502`` ``503``   that status, OpenAI error envelope                       no
``529``                   overloaded                                               no
``timeout``               nothing for ``hang_s`` (past the client's timeout)       yes
``reset``                 the connection is reset after the body was read          no
``half_body``             200, Content-Length of the full body, half of it, FIN    yes
``invalid_json``          200 ``application/json`` that does not parse             yes
``wrong_content_type``    200 ``text/html`` error page                             yes
``slow_stream``           (streams) ``stream_delay_ms`` between SSE chunks         yes
``dup_chunks``            (streams) every content chunk sent twice                 yes
``ooo_chunks``            (streams) content chunks swapped pairwise                yes
========================  ======================================================  ======

"Billed" faults are those where a real provider would have generated (and charged) the
answer. Server-side counters per request digest (sha256 of model + input text): received,
answered (a clean 200 delivered), billed, arrival times, tokens; ``GET /__stats`` returns
them as JSON, ``POST /__reset`` clears them, ``POST /__config`` changes the settings.

Requests with ``store: true`` are kept once generated (billed faults included, as OpenAI
stores what it generated), with their ``metadata``; ``GET /v1/chat/completions`` lists them
like OpenAI's stored-completions endpoint (``model``, ``metadata[k]=v``, ``after``,
``limit``, ``order``).

``usage`` chooses how ``usage.prompt_tokens`` is counted, to play teachers whose tokenizers
differ from the client's: ``words`` (default, whitespace words), ``chars`` (one token per
character, as a tokenizer without CJK merges reports Chinese text), ``bytes`` (one per UTF-8
byte of the input text, the most a byte-level BPE can produce) or ``none`` (the answer carries
no ``usage`` object; the server still bills its words count). ``extra_prompt_tokens`` /
``extra_completion_tokens`` inflate the reported (and billed) usage beyond what the request
could produce, as a faulty or hostile gateway might.

Optional server-enforced limits (``rpm_limit`` / ``tpm_limit`` per ``limit_window_s``)
answer 429 with ``x-ratelimit-*`` headers, like OpenAI.

Run: ``python -m apidistill.testing.fault_server --port 8090 --latency-ms 200
--fault-rate 0.2 --seed 1``. Tests use :class:`FaultServerProcess`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import socket
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp
from apidistill.testing.loopback import LoopbackServerProcess

__all__ = [
    "ALL_FAULTS",
    "BILLED_FAULTS",
    "FaultConfig",
    "FaultServerProcess",
    "build_app",
    "max_in_window",
    "request_digest",
]

HTTP_FAULTS = ("429", "500", "502", "503", "529")
BODY_FAULTS = ("timeout", "reset", "half_body", "invalid_json", "wrong_content_type")
STREAM_FAULTS = ("slow_stream", "dup_chunks", "ooo_chunks")
ALL_FAULTS = HTTP_FAULTS + BODY_FAULTS + STREAM_FAULTS
USAGE_MODES = ("words", "chars", "bytes", "none")
BILLED_FAULTS = frozenset(
    {"timeout", "half_body", "invalid_json", "wrong_content_type", *STREAM_FAULTS}
)


@dataclass
class FaultConfig:
    """Server behaviour; every field can be set on the command line or via ``/__config``."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_latency_ms: float = 0.0  # 429/5xx answer after this (providers refuse fast)
    fault_rate: float = 0.0
    # Relative weights of the faults drawn when a request fails (missing = 0).
    faults: dict[str, float] = field(
        default_factory=lambda: {k: 1.0 for k in HTTP_FAULTS + BODY_FAULTS}
    )
    seed: int = 0
    retry_after_ms: int | None = 20  # sent on 429 as retry-after-ms
    retry_after_s: int | None = None  # sent on 429 as retry-after (whole seconds)
    hang_s: float = 30.0  # the 'timeout' fault answers after this
    stream_delay_ms: float = 50.0  # 'slow_stream' gap between chunks
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    limit_window_s: float = 60.0
    usage: str = "words"  # how prompt_tokens is counted: words, chars, bytes, none (omitted)
    extra_prompt_tokens: int = 0  # added to the reported usage (adversarial gateways)
    extra_completion_tokens: int = 0
    # When set, a completion request whose ``Authorization`` is not ``Bearer <api_key>`` is
    # refused 401 as OpenAI refuses a wrong key (counted as received, never billed).
    api_key: str | None = None

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for k, v in values.items():
            if k not in names:
                raise ValueError(f"unknown setting {k!r}; known: {sorted(names)}")
            if k == "usage" and v not in USAGE_MODES:
                raise ValueError(f"unknown usage mode {v!r}; known: {USAGE_MODES}")
            if k == "faults":
                unknown = set(v) - set(ALL_FAULTS)
                if unknown:
                    raise ValueError(f"unknown faults {sorted(unknown)}; known: {ALL_FAULTS}")
            setattr(self, k, v)


def request_digest(body: dict[str, Any]) -> str:
    """The server's name for a request: model + input text (see ``pp.input_text``)."""
    blob = f"{body.get('model')}\n{pp.input_text(body)}"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass
class _Counter:
    received: int = 0
    answered: int = 0
    billed: int = 0
    outcomes: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class _State:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.stored: list[dict[str, Any]] = []  # chat completions sent with store: true
        self.lookups = 0  # GET /v1/chat/completions (stored-completion list) calls
        self.by_digest: dict[str, _Counter] = {}
        self.log: list[dict[str, Any]] = []
        self.window: deque[tuple[float, int]] = deque()  # (arrival, tokens) for limits

    def stats(self) -> dict[str, Any]:
        return {
            "clock": time.monotonic(),
            "received": sum(c.received for c in self.by_digest.values()),
            "answered": sum(c.answered for c in self.by_digest.values()),
            "billed": sum(c.billed for c in self.by_digest.values()),
            "stored": len(self.stored),
            "lookups": self.lookups,
            "digests": {d: asdict(c) for d, c in self.by_digest.items()},
            "log": self.log,
        }


def _reported_usage(answer: dict[str, Any], body: dict[str, Any], cfg: FaultConfig) -> Any:
    """Recount ``answer``'s usage as ``cfg.usage`` says (in place); returns what is billed.

    ``none`` removes the usage object from the answer but still bills the words count."""
    usage = dict(answer["usage"])
    text = pp.input_text(body)
    if cfg.usage == "chars":
        usage["prompt_tokens"] = len(text)
    elif cfg.usage == "bytes":
        usage["prompt_tokens"] = len(text.encode("utf-8"))
    usage["prompt_tokens"] += cfg.extra_prompt_tokens
    usage["completion_tokens"] += cfg.extra_completion_tokens
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if cfg.usage == "none":
        del answer["usage"]
    else:
        answer["usage"] = usage
    return usage


def _draw_fault(cfg: FaultConfig, digest: str, n: int, stream: bool) -> str | None:
    rng = random.Random(f"{cfg.seed}:{digest}:{n}")
    if rng.random() >= cfg.fault_rate:
        return None
    kinds = [k for k, w in cfg.faults.items() if w > 0 and (stream or k not in STREAM_FAULTS)]
    if not kinds:
        return None
    return rng.choices(kinds, weights=[cfg.faults[k] for k in kinds])[0]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers=headers,
        content_type="application/json",
    )  # fmt: skip


def _reset_connection(request: web.Request) -> None:
    """Abort with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _limit_headers(state: _State, now: float) -> dict[str, str]:
    cfg = state.config
    out: dict[str, str] = {}
    reqs = len(state.window)
    toks = sum(t for _, t in state.window)
    reset = (state.window[0][0] + cfg.limit_window_s - now) if state.window else 0.0
    reset_txt = f"{max(reset, 0.0):.3f}s"
    if cfg.rpm_limit:
        out["x-ratelimit-limit-requests"] = str(cfg.rpm_limit)
        out["x-ratelimit-remaining-requests"] = str(max(cfg.rpm_limit - reqs, 0))
        out["x-ratelimit-reset-requests"] = reset_txt
    if cfg.tpm_limit:
        out["x-ratelimit-limit-tokens"] = str(cfg.tpm_limit)
        out["x-ratelimit-remaining-tokens"] = str(max(cfg.tpm_limit - toks, 0))
        out["x-ratelimit-reset-tokens"] = reset_txt
    return out


def _over_limit(state: _State, now: float, tokens: int) -> bool:
    cfg = state.config
    if not (cfg.rpm_limit or cfg.tpm_limit):
        return False
    while state.window and state.window[0][0] <= now - cfg.limit_window_s:
        state.window.popleft()
    if cfg.rpm_limit and len(state.window) + 1 > cfg.rpm_limit:
        return True
    if cfg.tpm_limit and sum(t for _, t in state.window) + tokens > cfg.tpm_limit:
        return True
    state.window.append((now, tokens))
    return False


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


async def _completions(request: web.Request) -> web.StreamResponse:
    state: _State = request.app["state"]
    cfg = state.config
    arrived = time.monotonic()
    try:
        raw = await request.read()
    except ConnectionResetError:  # the client gave up before its body arrived: not received
        return web.Response(status=499)
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("body is not a JSON object")
    except ValueError as exc:
        return _json(pp.openai_error(f"invalid JSON body: {exc}"), 400)
    chat = request.path.endswith("/chat/completions")
    digest = request_digest(body)
    counter = state.by_digest.setdefault(digest, _Counter())
    counter.received += 1
    counter.times.append(arrived)
    if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
        message = "Incorrect API key provided. You can find your API key in your account settings."
        return _json(pp.openai_error(message, code="invalid_api_key"), 401)
    stream = bool(body.get("stream"))
    fault = _draw_fault(cfg, digest, counter.received, stream)
    answer = pp.openai_chat_completion(body) if chat else pp.openai_text_completion(body)
    usage = _reported_usage(answer, body, cfg)
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    if fault is None and _over_limit(state, arrived, tokens):
        fault = "limit_429"
    billed = fault is None or fault in BILLED_FAULTS
    counter.billed += int(billed)
    counter.outcomes.append(fault or "ok")
    entry = {
        "t": arrived,
        "digest": digest,
        "outcome": fault or "ok",
        "billed": billed,
        "prompt_tokens": usage["prompt_tokens"] if billed else 0,
        "completion_tokens": usage["completion_tokens"] if billed else 0,
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"] if billed else 0,
    }
    state.log.append(entry)
    limit_headers = _limit_headers(state, arrived)

    if fault in HTTP_FAULTS or fault == "limit_429":
        await _sleep_ms(cfg.error_latency_ms)
        return _http_fault(cfg, fault, limit_headers)
    if fault == "reset":
        await _sleep_ms(cfg.error_latency_ms)
        _reset_connection(request)
        return web.Response(status=500)  # never delivered: the transport is gone
    rng = random.Random(f"lat:{cfg.seed}:{digest}:{counter.received}")
    await _sleep_ms(cfg.latency_ms + cfg.jitter_ms * rng.random())
    if chat and body.get("store") is True:  # generated (and billed): kept, as OpenAI does
        state.stored.append({**answer, "metadata": dict(body.get("metadata") or {})})
    if fault == "timeout":
        await asyncio.sleep(cfg.hang_s)
    if stream:
        return await _stream(request, answer, body, fault, cfg, counter, limit_headers)
    payload = json.dumps(answer).encode()
    if fault == "half_body":
        resp = web.StreamResponse(status=200, headers=limit_headers)
        resp.content_type = "application/json"
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if request.transport is not None:
            request.transport.close()
        return resp
    if fault == "invalid_json":
        return web.Response(
            body=payload[: len(payload) // 3], headers=limit_headers,
            content_type="application/json",
        )  # fmt: skip
    if fault == "wrong_content_type":
        return web.Response(
            text="<html><body><h1>502 Bad Gateway</h1></body></html>",
            content_type="text/html",
            headers=limit_headers,
        )
    if fault is None:
        counter.answered += 1
    return web.Response(body=payload, content_type="application/json", headers=limit_headers)


def _http_fault(cfg: FaultConfig, fault: str, limit_headers: dict[str, str]) -> web.Response:
    if fault in ("429", "limit_429"):
        headers = dict(limit_headers)
        if cfg.retry_after_ms is not None:
            headers["retry-after-ms"] = str(cfg.retry_after_ms)
        if cfg.retry_after_s is not None:
            headers["retry-after"] = str(cfg.retry_after_s)
        return _json(
            pp.openai_error(
                "Rate limit reached for requests", type="requests", code="rate_limit_exceeded"
            ),
            429,
            headers,
        )
    status = int(fault)
    kind = "overloaded_error" if status == 529 else "server_error"
    return _json(pp.openai_error(f"injected {status}", type=kind), status)


def _chunks(answer: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE chunk objects (``chat.completion.chunk``) of one chat answer."""
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = answer["choices"][0]
    entries = (choice.get("logprobs") or {}).get("content")
    text_tokens = pp.answer_tokens(pp.input_text(body), pp._max_tokens(body))[0]

    def chunk(delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        ]}  # fmt: skip

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for i, tok in enumerate(text_tokens):
        lp = {"content": [entries[i]], "refusal": None} if entries else None
        out.append(chunk({"content": tok}, lp))
    out.append(chunk({}, None, choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage") and "usage" in answer:
        out.append({**base, "choices": [], "usage": answer["usage"]})
    return out


async def _stream(
    request: web.Request,
    answer: dict[str, Any],
    body: dict[str, Any],
    fault: str | None,
    cfg: FaultConfig,
    counter: _Counter,
    headers: dict[str, str],
) -> web.StreamResponse:
    if fault == "wrong_content_type":
        return web.Response(text="<html>stream unavailable</html>", content_type="text/html")
    chunks = _chunks(answer, body)
    content = chunks[1:-1] if "usage" not in chunks[-1] else chunks[1:-2]
    if fault == "dup_chunks":
        content = [c for c in content for _ in (0, 1)]
    elif fault == "ooo_chunks":
        for i in range(0, len(content) - 1, 2):
            content[i], content[i + 1] = content[i + 1], content[i]
    tail = chunks[len(chunks) - (2 if "usage" in chunks[-1] else 1) :]
    ordered = [chunks[0], *content, *tail]
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    delay = cfg.stream_delay_ms if fault == "slow_stream" else 0.0
    cut = len(ordered) // 2 if fault == "half_body" else None
    for i, c in enumerate(ordered):
        if cut is not None and i == cut:
            if request.transport is not None:
                request.transport.close()
            return resp
        if fault == "invalid_json" and i == len(ordered) // 2:
            await resp.write(b'data: {"id": "broken", "choices": [\n\n')
            continue
        await resp.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        await _sleep_ms(delay)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    if fault is None:
        counter.answered += 1
    return resp


async def _list_stored(request: web.Request) -> web.Response:
    """``GET /v1/chat/completions``: OpenAI's list of stored chat completions, filtered by
    ``model`` and ``metadata[key]=value``, paged by ``after`` / ``limit`` (default 20)."""
    state: _State = request.app["state"]
    state.lookups += 1
    q = request.query
    want = {k[len("metadata[") : -1]: v for k, v in q.items() if k.startswith("metadata[")}
    rows = [
        c
        for c in state.stored
        if ("model" not in q or c.get("model") == q["model"])
        and all(c["metadata"].get(k) == v for k, v in want.items())
    ]
    if q.get("order") == "desc":
        rows.reverse()
    if "after" in q:
        ids = [c["id"] for c in rows]
        rows = rows[ids.index(q["after"]) + 1 :] if q["after"] in ids else []
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        return _json(pp.openai_error("limit must be an integer"), 400)
    page = rows[:limit]
    return _json({
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(rows) > limit,
    })  # fmt: skip


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app["state"].stats())


async def _reset(request: web.Request) -> web.Response:
    request.app["state"].reset()
    return _json({"ok": True})


async def _configure(request: web.Request) -> web.Response:
    state: _State = request.app["state"]
    try:
        state.config.update(await request.json())
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(asdict(state.config))


async def _models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [
        {"id": "fault-model", "object": "model", "created": 0, "owned_by": "apidistill"}
    ]})  # fmt: skip


def build_app(config: FaultConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["state"] = _State(config or FaultConfig())
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/chat/completions", _list_stored)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/__stats", _stats)
    app.router.add_post("/__reset", _reset)
    app.router.add_post("/__config", _configure)
    return app


# ------------------------------------------------------------------ process


def _parse_faults(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in ALL_FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {ALL_FAULTS}")
        out[name] = float(weight or 1)
    return out


def _config_from_args(args: argparse.Namespace) -> FaultConfig:
    cfg = FaultConfig()
    for f in fields(cfg):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    return cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    ap.add_argument("--latency-ms", dest="latency_ms", type=float)
    ap.add_argument("--jitter-ms", dest="jitter_ms", type=float)
    ap.add_argument("--error-latency-ms", dest="error_latency_ms", type=float)
    ap.add_argument("--fault-rate", dest="fault_rate", type=float)
    ap.add_argument("--faults", type=_parse_faults, help="e.g. 429=2,500=1,timeout=1")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--retry-after-ms", dest="retry_after_ms", type=int)
    ap.add_argument("--retry-after-s", dest="retry_after_s", type=int)
    ap.add_argument("--hang-s", dest="hang_s", type=float)
    ap.add_argument("--stream-delay-ms", dest="stream_delay_ms", type=float)
    ap.add_argument("--rpm-limit", dest="rpm_limit", type=int)
    ap.add_argument("--tpm-limit", dest="tpm_limit", type=int)
    ap.add_argument("--limit-window-s", dest="limit_window_s", type=float)
    ap.add_argument("--usage", choices=USAGE_MODES, help="how prompt_tokens is counted")
    ap.add_argument("--extra-prompt-tokens", dest="extra_prompt_tokens", type=int)
    ap.add_argument("--extra-completion-tokens", dest="extra_completion_tokens", type=int)
    ap.add_argument("--api-key", dest="api_key", help="refuse other keys with 401")
    args = ap.parse_args(argv)
    if args.fault_rate is not None and not 0 <= args.fault_rate <= 1:
        ap.error("--fault-rate must be between 0 and 1")
    app = build_app(_config_from_args(args))
    asyncio.run(_serve(app, args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"fault server listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class FaultServerProcess(LoopbackServerProcess):
    """Run the fault server in its own process (as in production, the provider is another
    process); ``with FaultServerProcess(latency_ms=20) as srv: srv.base_url``."""

    module = "apidistill.testing.fault_server"
    label = "fault server"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = config

    def start(self, timeout_s: float = 30.0) -> FaultServerProcess:
        super().start(timeout_s)
        if self.config:
            self.configure(**self.config)
        return self

    def reset(self) -> None:
        with self._client() as c:
            c.post("/__reset").raise_for_status()

    def configure(self, **values: Any) -> dict[str, Any]:
        with self._client() as c:
            r = c.post("/__config", json=values)
            if r.status_code != 200:
                raise ValueError(r.text)
            return r.json()


def max_in_window(times: list[float], window_s: float, weights: list[int] | None = None) -> int:
    """Largest total (count, or sum of ``weights``) of events inside any window of
    ``window_s`` seconds (half-open), for asserting rate limits from server timestamps."""
    pairs = sorted(zip(times, weights or [1] * len(times), strict=True))
    best = total = 0
    j = 0
    for i in range(len(pairs)):
        total += pairs[i][1]
        while pairs[i][0] - pairs[j][0] >= window_s:
            total -= pairs[j][1]
            j += 1
        best = max(best, total)
    return best


if __name__ == "__main__":
    main()
