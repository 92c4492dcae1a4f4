"""The proxy itself: an ASGI app that forwards OpenAI and Anthropic calls to the teacher.

``POST /v1/chat/completions`` and ``POST /v1/messages`` (also under ``/r/<alias>/…``, the
route tag, or with an ``X-Apidistill-Route`` header) go to the configured teacher through one
shared connection pool (:mod:`apidistill.proxy.upstream`); the client gets the teacher's status, body, SSE events and
error envelope unchanged. Around each call the proxy (1) reserves the worst-case cost in the
budget, (2) journals the exchange in the capture store, (3) passes the answer through,
(4) assembles a streamed answer, settles the budget on its usage and commits the capture —
before the client gets the answer's last event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice, cost_of, worst_case_cost
from apidistill.costs.tokens import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_REQUEST
from apidistill.errors import BudgetExceeded
from apidistill.proxy.capture_store import CaptureStore, CaptureStoreError, Recovery
from apidistill.proxy.config import ProxyConfig
from apidistill.proxy.enrich import first_logprobs, strip_answer, strip_event, wants_enrichment
from apidistill.proxy.group_commit import GroupCommit, forget
from apidistill.proxy.shadow import run_shadow
from apidistill.proxy.shapes import Api, error_response, request_headers, response_headers
from apidistill.proxy.split import split_key, to_student
from apidistill.proxy.stats import Stats
from apidistill.proxy.streams import (
    BrokenStream,
    EventSplitter,
    assemble_anthropic,
    assemble_openai,
    event_data,
    is_terminal,
)
from apidistill.proxy.upstream import Upstream, UpstreamError, UpstreamResponse, open_upstream
from apidistill.records import Usage
from apidistill.teachers.openai import sampling_settings

__all__ = ["FORWARDED", "Incoming", "Proxy", "ProxyState", "build_app"]

log = logging.getLogger("apidistill.proxy")
_ALIAS = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_DEFAULT_ROOTS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
# the two forwarded routes: path -> (the API it speaks, the teacher's path); the servers'
# fast paths (asgi_fast.FastPath under uvicorn, http_front) look requests up here
FORWARDED: dict[str, tuple[Api, str]] = {
    "/v1/chat/completions": ("openai", "/v1/chat/completions"),
    "/v1/messages": ("anthropic", "/v1/messages"),
}
_ANTHROPIC_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "stop_sequences", "thinking")


def upstream_root(base_url: str | None, provider: str) -> str:
    """The origin the ``/v1/...`` paths are appended to: the teacher's base URL without a
    trailing ``/v1`` (OpenAI's convention), or the provider's public API."""
    if not base_url:
        return _DEFAULT_ROOTS.get(provider, _DEFAULT_ROOTS["openai"])
    return base_url.rstrip("/").removesuffix("/v1")


@dataclass
class PolicyView:
    """The teacher's terms as checked at start: whether captures may be kept, and why."""

    capture_allowed: bool
    decision: str
    decision_id: str | None
    reason: str


@dataclass
class ProxyState:
    """Everything the handlers share (one per process)."""

    cfg: ProxyConfig
    policy: PolicyView
    price: ModelPrice | None
    teacher_key: str | None
    store: CaptureStore | None = None
    budget: Budget | None = None
    recovery: Recovery | None = None
    stats: Stats = field(default_factory=Stats)
    rng: random.Random = field(default_factory=random.Random)
    client: Upstream | None = None
    enrich_k: int = 0  # top-k logprobs added to requests that ask none (enrich.py)
    background: set[Any] = field(default_factory=set)  # shadow calls in flight
    split_share: float = 0.0  # split mode: share answered by the student (admin endpoint)
    commits: GroupCommit | None = None  # the store's group commit (opened with the app)

    @property
    def root(self) -> str:
        return upstream_root(self.cfg.teacher.base_url, self.cfg.teacher.provider)

    def open_client(self) -> Upstream:
        """The one shared upstream pool (opened in the server's event loop)."""
        self.client = open_upstream(
            self.cfg.teacher.transport,
            max_connections=self.cfg.max_connections,
            timeout_s=self.cfg.timeout_s,
        )
        return self.client


@dataclass
class _Exchange:
    """One request in flight through the proxy."""

    id: str
    api: Api
    route: str
    body: dict[str, Any]
    started: float
    secrets: list[str]
    captured: bool = False
    journaled: bool = False
    reserved: bool = False
    worst: Decimal | None = None
    strip_usage_chunk: bool = False
    enriched: bool = False
    to_student: bool = False  # answered by the student at the budget cap: no teacher spend
    ok: bool = False  # the final row records an answer (status < 400)


@dataclass
class Incoming:
    """A client's request as the handlers need it, built straight from the ASGI scope on the
    fast path (no Starlette ``Request``/``Headers``/``QueryParams`` objects per request) or
    from a Starlette ``Request`` on the routed path: the same handler serves both."""

    body: bytes
    header_items: list[tuple[str, str]]  # names lower-case, in the order received
    headers: dict[str, str]  # the same, last value wins (lookups)
    query: list[tuple[str, str]]
    alias: str | None = None  # ``/r/<alias>/...``

    @classmethod
    def from_scope(cls, scope: Any, body: bytes) -> Incoming:
        items = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        qs = scope.get("query_string") or b""
        query = parse_qsl(qs.decode("latin-1"), keep_blank_values=True) if qs else []
        return cls(body, items, dict(items), query)

    @classmethod
    async def from_request(cls, request: Request) -> Incoming:
        inc = cls.from_scope(request.scope, await request.body())
        inc.alias = request.path_params.get("alias")
        return inc


def _usage_of(api: Api, answer: dict[str, Any] | None) -> Usage | None:
    u = (answer or {}).get("usage")
    if not isinstance(u, dict):
        return None

    def n(obj: object, key: str) -> int:
        v = obj.get(key) if isinstance(obj, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    if api == "anthropic":
        read, written = n(u, "cache_read_input_tokens"), n(u, "cache_creation_input_tokens")
        return Usage(
            input_tokens=n(u, "input_tokens") + read + written,
            output_tokens=n(u, "output_tokens"),
            cached_input_tokens=read,
            cache_write_input_tokens=written,
        )
    return Usage(
        input_tokens=n(u, "prompt_tokens"),
        output_tokens=n(u, "completion_tokens"),
        cached_input_tokens=n(u.get("prompt_tokens_details"), "cached_tokens"),
    )


def _sampling(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    if api == "anthropic":
        return {k: body[k] for k in _ANTHROPIC_SAMPLING if k in body}
    out = sampling_settings(body)
    for k in ("max_tokens", "max_completion_tokens"):
        if k in body:
            out[k] = body[k]
    return out


def _input_bound(raw: bytes, body: dict[str, Any]) -> int:
    """Input tokens the teacher cannot exceed for this body: every token covers at least one
    UTF-8 byte of the JSON body (which holds every message, tool and schema), plus the chat
    template's tokens (:func:`apidistill.costs.tokens.byte_bound_tokens`' rule). Images and
    audio referenced by URL are not bounded by their bytes (docs/proxy.md)."""
    messages = body.get("messages")
    n = len(messages) if isinstance(messages, list) else 1
    return len(raw) + TEMPLATE_TOKENS_PER_REQUEST + TEMPLATE_TOKENS_PER_MESSAGE * (n + 1)


class Proxy:
    """The request handlers over one :class:`ProxyState`."""

    def __init__(self, state: ProxyState) -> None:
        self.s = state

    # ----------------------------------------------------------------- entry points

    async def openai_chat(self, request: Request) -> Response:
        inc = await Incoming.from_request(request)
        return await self.forward(inc, "openai", "/v1/chat/completions")

    async def anthropic_messages(self, request: Request) -> Response:
        inc = await Incoming.from_request(request)
        return await self.forward(inc, "anthropic", "/v1/messages")

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the teacher's list (SDK clients ask for it); never captured."""
        assert self.s.client is not None
        headers, _ = request_headers(list(request.headers.items()), "openai", self.s.teacher_key)
        try:
            resp = await self.s.client.send(
                "GET", f"{self.s.root}/v1/models", content=None, headers=headers, params=None
            )
            data = await resp.read()
        except UpstreamError as exc:
            return error_response("openai", 502, f"apidistill proxy: teacher unreachable: {exc}")
        await resp.close()
        ctype = {k.lower(): v for k, v in resp.headers}.get("content-type")
        return Response(
            data, status_code=resp.status, headers=response_headers(resp.headers), media_type=ctype
        )

    # ----------------------------------------------------------------- the exchange

    def _route(self, inc: Incoming, api: Api) -> str | Response:
        alias = inc.alias or inc.headers.get("x-apidistill-route")
        if alias is None:
            return "default"
        if not _ALIAS.fullmatch(alias):
            return error_response(
                api,
                400,
                f"apidistill proxy: route tag {alias[:80]!r} must be 1-64 letters, digits, "
                "'_', '.' or '-' (path /r/<alias>/v1/... or header X-Apidistill-Route)",
            )
        return alias

    async def forward(self, inc: Incoming, api: Api, path: str) -> Response:
        s = self.s
        route = self._route(inc, api)
        if isinstance(route, Response):
            return route
        raw = inc.body
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return error_response(
                api, 400, f"apidistill proxy: the request body is not valid JSON ({exc})"
            )
        if not isinstance(body, dict):
            return error_response(api, 400, "apidistill proxy: the request body must be an object")
        headers, secrets = request_headers(inc.header_items, api, s.teacher_key)
        ex = _Exchange(os.urandom(16).hex(), api, route, body, time.perf_counter(), secrets)
        rs = s.stats.route(route)
        rs.requests += 1
        split = s.cfg.split
        if split is not None and to_student(
            split_key(inc.headers, body, split.key_header), s.split_share, s.rng
        ):
            answered = await self._from_student(api, path, body, headers)
            if answered is not None:
                rs.answered_by_student += 1
                rs.latencies_ms.append((time.perf_counter() - ex.started) * 1000)
                return answered
            rs.student_fallbacks += 1
        root = s.root
        if s.budget is not None:
            max_out = (
                body.get("max_completion_tokens")
                or body.get("max_tokens")
                or s.cfg.budget.assume_max_output_tokens  # type: ignore[union-attr]
            )
            ex.worst = worst_case_cost(
                s.price, _input_bound(raw, body), int(max_out) if isinstance(max_out, int) else 0
            )
            try:
                s.budget.reserve(ex.id, ex.worst)
                ex.reserved = True
            except BudgetExceeded as exc:
                budget_cfg = s.cfg.budget
                assert budget_cfg is not None
                if budget_cfg.at_cap == "refuse":
                    rs.refused_budget += 1
                    return self._refusal(api, str(exc))
                rs.answered_by_student += 1
                assert budget_cfg.student_url is not None
                root = upstream_root(budget_cfg.student_url, "openai")
                ex.to_student = True
                # the teacher's key (or the client's) is for the teacher only
                headers = {
                    k: v for k, v in headers.items() if k not in ("authorization", "x-api-key")
                }
        stream = bool(body.get("stream"))
        send = body
        if root == s.root:
            ex.captured = (
                s.store is not None
                and s.cfg.capture.enabled
                and s.policy.capture_allowed
                and s.rng.random() < s.cfg.capture.sample_rate
            )
            if (
                api == "openai"
                and stream
                and not (body.get("stream_options") or {}).get("include_usage")
            ):
                # the stream's usage is what the budget settles on: ask for it, and drop the
                # extra usage-only chunk so the client sees what it asked for
                send = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                                   "include_usage": True}}  # fmt: skip
                ex.strip_usage_chunk = True
            if (
                api == "openai"
                and ex.captured
                and s.enrich_k
                and wants_enrichment(body, s.cfg.teacher.model)
            ):
                send = {**send, "logprobs": True, "top_logprobs": s.enrich_k}
                ex.enriched = True
            await self._journal_start(ex)
        if not ex.captured:
            rs.not_captured += 1
        content = raw if send is body else json.dumps(send).encode()
        assert s.client is not None
        try:
            upstream = await s.client.send(
                "POST",
                root + path,
                content=content,
                headers=headers,
                params=inc.query or None,
            )
        except UpstreamError as exc:
            await self._committed(ex, self._close(ex, 502, None, None, billed_unknown=exc.sent))
            rs.upstream_errors += 1
            return error_response(
                api,
                504 if exc.timeout else 502,
                f"apidistill proxy: the teacher did not answer ({exc})",
            )
        ctype = {k.lower(): v for k, v in upstream.headers}.get("content-type", "")
        passback = response_headers(upstream.headers)
        if stream and upstream.status == 200 and "text/event-stream" in ctype:
            return StreamingResponse(
                self._relay(ex, upstream),
                status_code=200,
                headers=passback,
                media_type="text/event-stream",
            )
        try:
            data = await upstream.read()
        except UpstreamError as exc:
            await self._committed(ex, self._close(ex, 502, None, None, billed_unknown=True))
            rs.upstream_errors += 1
            return error_response(
                api, 502, f"apidistill proxy: the teacher's answer broke off ({exc})"
            )
        finally:
            await upstream.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if upstream.status >= 400:
            rs.upstream_errors += 1
        answer = answer if isinstance(answer, dict) else None
        await self._committed(ex, self._close(ex, upstream.status, answer, first_logprobs(answer)))
        if upstream.status == 200 and root == s.root:
            self._shadow(ex, answer)
        if ex.enriched:
            data = strip_answer(data)
        return Response(
            data, status_code=upstream.status, headers=passback, media_type=ctype or None
        )

    async def _relay(self, ex: _Exchange, upstream: UpstreamResponse) -> Any:
        """Pass SSE events on as they complete; hold the terminal event until the capture is
        committed."""
        splitter = EventSplitter()
        events: list[bytes] = []
        held: list[bytes] = []
        finished = broke = False
        pending: asyncio.Future[None] | None = None
        try:
            async for chunk in upstream.chunks():
                for ev in splitter.feed(chunk):
                    events.append(ev)
                    if ex.strip_usage_chunk and _usage_only(ev):
                        continue
                    out = strip_event(ev) if ex.enriched else ev
                    if held or is_terminal(ev):
                        held.append(out)
                    else:
                        yield out
            rest = splitter.rest()
            finished = True
        except UpstreamError:
            rest = splitter.rest()
            broke = True
            self.s.stats.route(ex.route).upstream_errors += 1
        finally:
            await upstream.close()
            if not finished:
                # the client went away or the teacher broke off: the answer may be billed
                assembled = self._assemble(ex.api, events)
                pending = self._close(ex, 502, assembled, None, billed_unknown=True, partial=True)
                if pending is not None and not broke:  # the client left: nobody waits
                    forget(pending, lambda exc: self._capture_error(exc))
        if not finished:  # the teacher broke off: the cut answer's end waits for its row too
            await self._committed(ex, pending)
            if rest:
                yield rest
            return
        assembled = self._assemble(ex.api, events)
        if any(is_terminal(ev) for ev in events):
            await self._committed(ex, self._close(ex, 200, assembled, first_logprobs(assembled)))
            self._shadow(ex, assembled)
        else:  # cut short without an error (no [DONE] / message_stop): not a whole answer
            self.s.stats.route(ex.route).upstream_errors += 1
            pending = self._close(ex, 502, assembled, None, billed_unknown=True, partial=True)
            await self._committed(ex, pending)
        for ev in held:
            yield ev
        if rest:
            yield rest

    @staticmethod
    def _assemble(api: Api, events: list[bytes]) -> dict[str, Any] | None:
        """The whole answer of a stream; ``None`` when an event is broken."""
        try:
            return assemble_anthropic(events) if api == "anthropic" else assemble_openai(events)
        except BrokenStream:
            return None

    # ----------------------------------------------------------------- bookkeeping

    async def _journal_start(self, ex: _Exchange) -> None:
        """Journal the exchange and wait for its commit: the row (and its reservation) is on
        disk before the request can reach the teacher and be billed."""
        s = self.s
        if s.store is None or s.commits is None:
            return
        try:
            row = s.store.start_row(
                ex.id,
                route=ex.route,
                api=ex.api,
                model=ex.body.get("model") if isinstance(ex.body.get("model"), str) else None,
                captured=ex.captured,
                request=ex.body,
                sampling=_sampling(ex.api, ex.body),
                policy_decision_id=s.policy.decision_id,
                reserved_usd=ex.worst,
                secrets=ex.secrets,
            )
            await s.commits.submit(row)
            ex.journaled = True
        except CaptureStoreError as exc:
            self._capture_error(exc)
            ex.captured = False

    def _capture_error(self, exc: CaptureStoreError) -> None:
        self.s.stats.capture_errors += 1
        log.error("%s", exc)

    async def _committed(self, ex: _Exchange, pending: asyncio.Future[None] | None) -> None:
        """Wait until the exchange's final row is committed (before the answer's end goes to
        the client)."""
        if pending is None:
            return
        try:
            await pending
        except CaptureStoreError as exc:
            self._capture_error(exc)
            return
        if ex.captured and ex.ok:
            self.s.stats.route(ex.route).captured += 1

    def _close(
        self,
        ex: _Exchange,
        status: int,
        answer: dict[str, Any] | None,
        logprobs: Any,
        *,
        billed_unknown: bool = False,
        partial: bool = False,
    ) -> asyncio.Future[None] | None:
        """Settle the budget and queue the journal row's commit; runs once per exchange. The
        caller awaits the returned commit (:meth:`_committed`) before the answer ends."""
        s = self.s
        rs = s.stats.route(ex.route)
        usage = _usage_of(ex.api, answer) if status < 400 or partial else None
        if ex.to_student:
            cost = None
        elif billed_unknown or (status < 400 and usage is None):
            cost = ex.worst  # may have been billed, amount unknown: charged at its worst case
        elif status >= 400:
            cost = Decimal(0) if s.price is not None else None  # providers bill no errors
        else:
            cost = cost_of(s.price, usage) if usage is not None else None
        if ex.reserved and s.budget is not None:
            s.budget.settle(ex.id, cost)
            ex.reserved = False
        if cost is not None:
            rs.spend_usd += cost
        if status < 400 and answer is None:
            status = 502  # a 2xx whose body is not an answer (not JSON): nothing to keep
        pending = None
        if ex.journaled and s.store is not None and s.commits is not None:
            ex.ok = status < 400
            try:
                pending = s.commits.submit(
                    s.store.finish_row(
                        ex.id,
                        captured=ex.captured,
                        http_status=status,
                        response=answer,
                        usage=usage.model_dump() if usage is not None else None,
                        cost_usd=cost,
                        logprobs=logprobs,
                        secrets=ex.secrets,
                    )
                )
            except CaptureStoreError as exc:
                self._capture_error(exc)
            ex.journaled = False
        rs.latencies_ms.append((time.perf_counter() - ex.started) * 1000)
        return pending

    async def _from_student(
        self, api: Api, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> Response | None:
        """Split mode: the student's answer, passed through; ``None`` (fall back to the
        teacher) on a transport error, a 5xx or no answer within ``split.timeout_s``."""
        s = self.s
        cfg = s.cfg.split
        assert cfg is not None and s.client is not None
        send = {**body, "model": cfg.model} if cfg.model else body
        plain = {k: v for k, v in headers.items() if k not in ("authorization", "x-api-key")}
        try:
            resp = await asyncio.wait_for(
                s.client.send("POST", upstream_root(cfg.student_url, "openai") + path,
                              content=json.dumps(send).encode(), headers=plain, params=None),
                cfg.timeout_s,
            )  # fmt: skip
        except (TimeoutError, UpstreamError) as exc:
            log.warning("split: student failed (%s); the teacher answers", exc)
            return None
        if resp.status >= 500:
            await resp.close()
            return None
        ctype = {k.lower(): v for k, v in resp.headers}.get("content-type", "")
        if "text/event-stream" in ctype:

            async def relay() -> Any:
                try:
                    async for chunk in resp.chunks():
                        yield chunk
                except UpstreamError:
                    pass
                finally:
                    await resp.close()

            return StreamingResponse(relay(), status_code=resp.status, media_type=ctype)
        try:
            data = await asyncio.wait_for(resp.read(), cfg.timeout_s)
        except (TimeoutError, UpstreamError):
            return None
        finally:
            await resp.close()
        return Response(data, status_code=resp.status, media_type=ctype or None)

    async def admin_split(self, request: Request) -> Response:
        """``GET``/``POST /admin/split`` ``{"share": x}``: read or change the split share at
        run time (``apidistill proxy promote|rollback``); loopback clients only."""
        s = self.s
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost"):
            return JSONResponse({"error": "admin endpoints answer loopback clients only"}, 403)
        if s.cfg.split is None:
            return JSONResponse(
                {"error": "split mode is off: add a 'split:' section to the proxy settings"}, 409
            )
        if request.method == "POST":
            try:
                share = float((await request.json())["share"])
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": 'send {"share": <number between 0 and 1>}'}, 400)
            if not 0.0 <= share <= 1.0:
                return JSONResponse({"error": f"share must be between 0 and 1, got {share}"}, 400)
            previous, s.split_share = s.split_share, share
            log.warning("split share %s -> %s", previous, share)
        return JSONResponse({"share": s.split_share})

    def _shadow(self, ex: _Exchange, answer: dict[str, Any] | None) -> None:
        """Start the shadow call for a teacher answer (shadow mode), in the background."""
        s = self.s
        cfg = s.cfg.shadow
        if cfg is None or s.rng.random() >= cfg.share:
            return
        path = "/v1/messages" if ex.api == "anthropic" else "/v1/chat/completions"
        headers = {"content-type": "application/json"}
        if ex.api == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
        assert s.client is not None
        task = asyncio.get_running_loop().create_task(
            run_shadow(
                s.client, upstream_root(cfg.student_url, "openai") + path, ex.api, ex.body,
                headers, answer, cfg.model, cfg.timeout_s, s.stats.route(ex.route).shadow,
            )
        )  # fmt: skip
        s.background.add(task)
        task.add_done_callback(s.background.discard)

    def _refusal(self, api: Api, why: str) -> Response:
        msg = f"apidistill proxy: the upstream budget is used up: {why}"
        if api == "anthropic":
            return error_response(api, 402, msg, kind="billing_error")
        return error_response(api, 429, msg, kind="insufficient_quota", code="insufficient_quota")

    # ----------------------------------------------------------------- live view

    def stats_view(self) -> dict[str, Any]:
        s = self.s
        out: dict[str, Any] = {
            "teacher": {"provider": s.cfg.teacher.provider, "model": s.cfg.teacher.model},
            "policy": {
                "capture_allowed": s.policy.capture_allowed,
                "decision": s.policy.decision,
                "decision_id": s.policy.decision_id,
                "reason": s.policy.reason,
            },
            "capture": {
                "enabled": s.cfg.capture.enabled and s.policy.capture_allowed,
                "sample_rate": s.cfg.capture.sample_rate,
                "logprobs_top_k": s.enrich_k,
                "path": str(s.store.path) if s.store else None,
                "errors": s.stats.capture_errors,
            },
            "routes": {r: v.view() for r, v in sorted(s.stats.routes.items())},
        }
        if s.cfg.split is not None:
            out["split"] = {"share": s.split_share, "student_url": s.cfg.split.student_url}
        if s.recovery is not None:
            out["recovered"] = {
                "in_flight_at_last_stop": s.recovery.in_flight,
                "at_risk_usd": str(s.recovery.at_risk_usd),
            }
        if s.budget is not None:
            out["budget"] = {
                "limit_usd": str(s.budget.limit),
                "spent_usd": str(s.budget.spent),
                "at_risk_usd": str(s.budget.at_risk),
                "reserved_usd": str(s.budget.reserved),
                "remaining_usd": str(s.budget.remaining),
            }
        return out

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.stats_view())

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(
            self.s.stats.prometheus(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def not_found(self, request: Request) -> Response:
        api: Api = "anthropic" if "anthropic-version" in request.headers else "openai"
        return error_response(
            api,
            404,
            f"apidistill proxy forwards POST /v1/chat/completions and POST /v1/messages; "
            f"{request.method} {request.url.path} is not one of them",
        )


def _usage_only(event: bytes) -> bool:
    """The extra ``choices: []`` chunk carrying ``usage`` (``stream_options.include_usage``)."""
    _, data = event_data(event)
    if not data.startswith("{"):
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and "usage" in obj


def build_app(state: ProxyState) -> Starlette:
    """The ASGI app; the shared upstream client opens and closes with the app's lifespan."""
    from contextlib import asynccontextmanager

    from apidistill.proxy.live_page import page

    proxy = Proxy(state)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        client = state.open_client()
        if state.store is not None:
            state.commits = GroupCommit(state.store)
        try:
            yield
        finally:
            if state.commits is not None:
                state.commits.flush()  # rows queued in the last turn
            await client.close()

    async def index(request: Request) -> Response:
        return page()

    routes = [
        Route("/v1/chat/completions", proxy.openai_chat, methods=["POST"]),
        Route("/v1/messages", proxy.anthropic_messages, methods=["POST"]),
        Route("/r/{alias}/v1/chat/completions", proxy.openai_chat, methods=["POST"]),
        Route("/r/{alias}/v1/messages", proxy.anthropic_messages, methods=["POST"]),
        Route("/v1/models", proxy.models, methods=["GET"]),
        Route("/stats", proxy.stats, methods=["GET"]),
        Route("/admin/split", proxy.admin_split, methods=["GET", "POST"]),
        Route("/metrics", proxy.metrics, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/{rest:path}", proxy.not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.proxy = proxy
    return app
