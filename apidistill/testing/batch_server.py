"""A loopback stand-in for the OpenAI Batch and Anthropic Message Batches APIs.

Endpoints and objects follow the providers' API references:

- OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``) → ``file`` object;
  ``GET /v1/files/{id}`` and ``/v1/files/{id}/content``; ``POST /v1/batches`` → ``batch``
  object (``validating`` → ``in_progress`` → ``completed`` | ``expired`` | ``cancelled`` |
  ``failed``); ``GET /v1/batches/{id}``; ``GET /v1/batches`` (cursor list: ``after``,
  ``limit`` 1–100, newest first);
  ``POST /v1/batches/{id}/cancel``. Output lines are ``{"id", "custom_id", "response":
  {"status_code", "request_id", "body"}, "error": null}``; failed, expired and cancelled
  requests go to the error file (``response`` with a non-200 status, or ``error`` with code
  ``batch_expired`` / ``batch_cancelled``).
- Anthropic: ``POST /v1/messages/batches`` → ``message_batch`` (``in_progress`` →
  ``canceling`` → ``ended``); ``GET`` one, ``GET`` list (``after_id`` or ``before_id``,
  ``limit`` 1–1000, newest first), ``POST .../cancel``; ``GET .../results`` → JSONL of ``{"custom_id", "result":
  {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}``. Online, too:
  ``POST /v1/messages`` → ``message`` (usage from the server's prompt cache,
  :class:`~apidistill.testing.provider_payloads.AnthropicPromptCache`) and
  ``POST /v1/messages/count_tokens`` → ``{"input_tokens": n}`` (``count_tokens_calls``
  counts them).

Answers are deterministic (:mod:`apidistill.testing.provider_payloads`). Tests steer the
lifecycle: a batch finishes after ``polls_to_finish`` retrievals (or :meth:`finish`), and
``line_errors``, ``expire_after`` and ``cancel_keeps`` inject per-line failures, expiry with
partial work, and cancellation with partial work. ``processed`` counts every item the
"provider" ran (= billed), per custom id, so tests can prove nothing ran twice.

Run alone: ``python -m apidistill.testing.batch_server --port 8089``.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp

__all__ = ["BatchServer"]

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200_000_000
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256_000_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_OPENAI_ENDPOINTS = {"/v1/chat/completions", "/v1/completions"}
_ANTHROPIC_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Job:
    """One batch of either provider, with its items and how it will end."""

    id: str
    provider: str
    items: list[tuple[str, dict[str, Any]]]
    created: float
    polls_left: int
    obj: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancel_requested: bool = False


class BatchServer:
    """Both providers' batch endpoints on one loopback port."""

    def __init__(self, *, polls_to_finish: int = 1) -> None:
        self.polls_to_finish = polls_to_finish
        # custom_id → (HTTP status, error body) for OpenAI; → Anthropic error type.
        self.line_errors: dict[str, tuple[int, dict[str, Any]] | str] = {}
        self.expire_after: int | None = None  # the next batches run only this many items
        self.cancel_keeps = 0  # items finished before a cancel lands
        self.require_key = True
        self.calls: Counter[str] = Counter()
        self.processed: Counter[str] = Counter()
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.jobs: dict[str, _Job] = {}
        self._order: list[str] = []
        self.prompt_cache = pp.AnthropicPromptCache()
        self.count_tokens_calls = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=ANTHROPIC_MAX_BYTES + 1_000_000)
        app.middlewares.append(self._count_and_auth)
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._openai_create)
        r.add_get("/v1/batches", self._openai_list)
        r.add_get("/v1/batches/{id}", self._openai_get)
        r.add_post("/v1/batches/{id}/cancel", self._openai_cancel)
        r.add_post("/v1/messages/batches", self._anthropic_create)
        r.add_get("/v1/messages/batches", self._anthropic_list)
        r.add_get("/v1/messages/batches/{id}", self._anthropic_get)
        r.add_post("/v1/messages/batches/{id}/cancel", self._anthropic_cancel)
        r.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)
        r.add_post("/v1/messages", self._anthropic_message)
        r.add_post("/v1/messages/count_tokens", self._anthropic_count_tokens)
        return app

    async def _anthropic_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(pp.anthropic_message(body, cache=self.prompt_cache))

    async def _anthropic_count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body.get("model"), str) or not body.get("messages"):
            return _error(request, 400, "invalid_request_error", "model and messages: required")
        self.count_tokens_calls += 1
        return web.json_response(pp.anthropic_count_tokens(body))

    async def start(self, port: int = 0) -> BatchServer:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BatchServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def finish(self, batch_id: str) -> None:
        """End a batch now (as the provider would when its work is done)."""
        job = self.jobs[batch_id]
        job.polls_left = 0
        self._advance(job, poll=False)

    @web.middleware
    async def _count_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        self.calls[f"{request.method} {route.canonical if route else request.path}"] += 1
        has_key = request.headers.get("Authorization", "").startswith("Bearer ") or (
            "x-api-key" in request.headers
        )
        if self.require_key and not has_key:
            return _error(request, 401, "authentication_error", "missing API key")
        return await handler(request)

    # ------------------------------------------------------------------ files

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch" or not isinstance(upload, web.FileField):
            return _error(request, 400, "invalid_request_error", "need purpose=batch and a file")
        data = upload.file.read()
        return web.json_response(self._store_file(upload.filename or "upload.jsonl", data, "batch"))

    def _store_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        fid = "file-" + secrets.token_hex(12)
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.files[fid] = (obj, data)
        return obj

    async def _file(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _error(request, 404, "invalid_request_error", "No such File object")
        return web.json_response(found[0])

    async def _file_content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _error(request, 404, "invalid_request_error", "No such File object")
        return web.Response(body=found[1], content_type="application/octet-stream")

    # ------------------------------------------------------------------ OpenAI batches

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        found = self.files.get(body.get("input_file_id", ""))
        if found is None:
            return _error(request, 400, "invalid_request_error", "input_file_id not found")
        if body.get("completion_window") != "24h" or body.get("endpoint") not in _OPENAI_ENDPOINTS:
            return _error(request, 400, "invalid_request_error", "bad endpoint or window")
        now = time.time()
        bid = "batch_" + secrets.token_hex(12)
        obj = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "in_progress_at": None,
            "expires_at": int(now + 86400),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        items, problems = _openai_lines(found[1], body["endpoint"])
        job = _Job(bid, "openai", items, now, self.polls_to_finish, obj)
        if problems:
            obj.update(status="failed", failed_at=int(now))
            obj["errors"] = {"object": "list", "data": problems}
        else:
            obj["request_counts"]["total"] = len(items)
        self.jobs[bid] = job
        self._order.append(bid)
        return web.json_response(obj)

    async def _openai_get(self, request: web.Request) -> web.Response:
        job = self._job(request, "openai")
        if job is None:
            return _error(request, 404, "invalid_request_error", "No such batch")
        self._advance(job, poll=True)
        return web.json_response(job.obj)

    async def _openai_list(self, request: web.Request) -> web.Response:
        limit = _limit(request, 100)
        if limit is None:
            return _error(request, 400, "invalid_request_error", "limit: must be 1 to 100")
        ids = [i for i in reversed(self._order) if self.jobs[i].provider == "openai"]
        after = request.query.get("after")
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = [self.jobs[i].obj for i in ids[:limit]]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(ids) > limit,
            }
        )

    async def _openai_cancel(self, request: web.Request) -> web.Response:
        job = self._job(request, "openai")
        if job is None:
            return _error(request, 404, "invalid_request_error", "No such batch")
        if job.obj["status"] in ("validating", "in_progress"):
            job.cancel_requested = True
            job.obj.update(status="cancelling", cancelling_at=int(time.time()))
        return web.json_response(job.obj)

    # ------------------------------------------------------------------ Anthropic batches

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            return _error(request, 400, "invalid_request_error", "requests: must be a list")
        if len(reqs) > ANTHROPIC_MAX_REQUESTS or len(raw) > ANTHROPIC_MAX_BYTES:
            return _error(request, 413, "request_too_large", "batch too large")
        seen: set[str] = set()
        items = []
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid) or cid in seen:
                return _error(
                    request, 400, "invalid_request_error", f"requests.{i}.custom_id: invalid"
                )
            params = r.get("params")
            if not isinstance(params, dict) or not {"model", "max_tokens", "messages"} <= set(
                params
            ):
                return _error(request, 400, "invalid_request_error", f"requests.{i}.params")
            seen.add(cid)
            items.append((cid, params))
        now = time.time()
        bid = "msgbatch_" + secrets.token_hex(12)
        obj = {
            "id": bid,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(items),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": None,
            "created_at": _rfc3339(now),
            "expires_at": _rfc3339(now + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        self.jobs[bid] = _Job(bid, "anthropic", items, now, self.polls_to_finish, obj)
        self._order.append(bid)
        return web.json_response(obj)

    async def _anthropic_get(self, request: web.Request) -> web.Response:
        job = self._job(request, "anthropic")
        if job is None:
            return _error(request, 404, "not_found_error", "batch not found")
        self._advance(job, poll=True)
        return web.json_response(job.obj)

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        limit = _limit(request, 1000)
        if limit is None:
            return _error(request, 400, "invalid_request_error", "limit: must be 1 to 1000")
        ids = [i for i in reversed(self._order) if self.jobs[i].provider == "anthropic"]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after and before:
            return _error(request, 400, "invalid_request_error", "give after_id or before_id")
        if before in ids:  # the page immediately before (newer than) that batch
            end = ids.index(before)
            page_ids, more = ids[max(0, end - limit) : end], end > limit
        else:
            if after in ids:
                ids = ids[ids.index(after) + 1 :]
            page_ids, more = ids[:limit], len(ids) > limit
        page = [self.jobs[i].obj for i in page_ids]
        return web.json_response(
            {
                "data": page,
                "has_more": more,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def _anthropic_cancel(self, request: web.Request) -> web.Response:
        job = self._job(request, "anthropic")
        if job is None:
            return _error(request, 404, "not_found_error", "batch not found")
        if job.obj["processing_status"] == "in_progress":
            job.cancel_requested = True
            job.obj.update(processing_status="canceling", cancel_initiated_at=_rfc3339(time.time()))
        return web.json_response(job.obj)

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        job = self._job(request, "anthropic")
        if job is None or job.obj["processing_status"] != "ended":
            return _error(request, 404, "not_found_error", "results not available yet")
        data = "".join(json.dumps(line) + "\n" for line in job.results)
        return web.Response(text=data, content_type="application/binary")

    # ------------------------------------------------------------------ processing

    def _job(self, request: web.Request, provider: str) -> _Job | None:
        job = self.jobs.get(request.match_info["id"])
        return job if job is not None and job.provider == provider else None

    def _advance(self, job: _Job, *, poll: bool) -> None:
        """Move a batch one step: validating → in_progress, then end after the polls."""
        if job.provider == "openai":
            status = job.obj["status"]
            if status == "validating" and not job.cancel_requested:
                job.obj.update(status="in_progress", in_progress_at=int(time.time()))
                if poll:
                    return
            if job.obj["status"] not in ("in_progress", "cancelling"):
                return
        elif job.obj["processing_status"] == "ended":
            return
        if poll and not job.cancel_requested:
            job.polls_left -= 1
            if job.polls_left > 0:
                return
        if job.cancel_requested:
            self._run(job, keep=self.cancel_keeps, rest="canceled")
        elif self.expire_after is not None:
            self._run(job, keep=self.expire_after, rest="expired")
        else:
            self._run(job, keep=len(job.items), rest="expired")

    def _run(self, job: _Job, *, keep: int, rest: str) -> None:
        ran = job.items[:keep]
        skipped = job.items[keep:]
        if job.provider == "openai":
            self._finish_openai(job, ran, skipped, rest)
        else:
            self._finish_anthropic(job, ran, skipped, rest)

    def _finish_openai(self, job: _Job, ran: list, skipped: list, rest: str) -> None:
        out, err = [], []
        for cid, body in ran:
            self.processed[cid] += 1
            line_id = "batch_req_" + secrets.token_hex(12)
            request_id = "req_" + secrets.token_hex(12)
            fault = self.line_errors.get(cid)
            if isinstance(fault, tuple):
                status, payload = fault
                response = {"status_code": status, "request_id": request_id, "body": payload}
                err.append({"id": line_id, "custom_id": cid, "response": response, "error": None})
                continue
            answer = (
                pp.openai_chat_completion(body)
                if job.obj["endpoint"] == "/v1/chat/completions"
                else pp.openai_text_completion(body)
            )
            response = {"status_code": 200, "request_id": request_id, "body": answer}
            out.append({"id": line_id, "custom_id": cid, "response": response, "error": None})
        code, message = (
            ("batch_cancelled", "This request was cancelled before it could be executed.")
            if rest == "canceled"
            else (
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
        )
        for cid, _ in skipped:
            err.append(
                {
                    "id": "batch_req_" + secrets.token_hex(12),
                    "custom_id": cid,
                    "response": None,
                    "error": {"code": code, "message": message},
                }
            )
        now = int(time.time())
        obj = job.obj
        if out:
            data = "".join(json.dumps(line) + "\n" for line in out).encode()
            obj["output_file_id"] = self._store_file("batch_output.jsonl", data, "batch_output")[
                "id"
            ]
        if err:
            data = "".join(json.dumps(line) + "\n" for line in err).encode()
            obj["error_file_id"] = self._store_file("batch_errors.jsonl", data, "batch_output")[
                "id"
            ]
        obj["request_counts"] = {"total": len(job.items), "completed": len(out), "failed": len(err)}
        if job.cancel_requested:
            obj.update(status="cancelled", cancelled_at=now)
        elif skipped:
            obj.update(status="expired", expired_at=now)
        else:
            obj.update(status="completed", finalizing_at=now, completed_at=now)

    def _finish_anthropic(self, job: _Job, ran: list, skipped: list, rest: str) -> None:
        counts = Counter[str]()
        for cid, params in ran:
            self.processed[cid] += 1
            fault = self.line_errors.get(cid)
            if isinstance(fault, str):
                result = {
                    "type": "errored",
                    "error": pp.anthropic_error(fault, f"{fault} on {cid}"),
                }
                counts["errored"] += 1
            else:
                result = {"type": "succeeded", "message": pp.anthropic_message(params)}
                counts["succeeded"] += 1
            job.results.append({"custom_id": cid, "result": result})
        for cid, _ in skipped:
            job.results.append({"custom_id": cid, "result": {"type": rest}})
            counts[rest] += 1
        job.obj.update(
            processing_status="ended",
            ended_at=_rfc3339(time.time()),
            results_url=f"{self.anthropic_url}/v1/messages/batches/{job.id}/results",
            request_counts={
                "processing": 0,
                **{k: counts[k] for k in ("succeeded", "errored", "canceled", "expired")},
            },
        )


def _openai_lines(data: bytes, endpoint: str) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Validate an input file as OpenAI does; problems make the batch ``failed``."""
    problems: list[dict[str, Any]] = []
    items: list[tuple[str, dict[str, Any]]] = []
    models: set[str] = set()
    seen: set[str] = set()

    def problem(code: str, message: str, line: int | None) -> None:
        problems.append({"code": code, "message": message, "param": None, "line": line})

    if len(data) > OPENAI_MAX_BYTES:
        problem("file_too_large", "input file exceeds 200 MB", None)
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    if len(lines) > OPENAI_MAX_REQUESTS:
        problem("too_many_requests", "more than 50,000 requests in one batch", None)
    for n, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text)
        except ValueError:
            problem("invalid_json_line", "line is not JSON", n)
            continue
        cid, body = obj.get("custom_id"), obj.get("body")
        if not isinstance(cid, str) or cid in seen:
            problem("duplicate_custom_id", "custom_id missing or repeated", n)
        elif obj.get("method") != "POST" or obj.get("url") != endpoint:
            problem("mismatched_endpoint", f"url must be {endpoint}", n)
        elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
            problem("missing_required_parameter", "body.model is required", n)
        else:
            seen.add(cid)
            models.add(body["model"])
            items.append((cid, body))
    if len(models) > 1:
        problem("mismatched_model", "one model per batch file", None)
    return items, problems


def _limit(request: web.Request, most: int) -> int | None:
    """A list call's ``limit`` (default 20, documented range 1..``most``); None if out of it."""
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return None
    return limit if 1 <= limit <= most else None


def _error(request: web.Request, status: int, kind: str, message: str) -> web.Response:
    if request.path.startswith("/v1/messages"):
        return web.json_response(pp.anthropic_error(kind, message), status=status)
    return web.json_response(pp.openai_error(message, type=kind), status=status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--polls-to-finish", type=int, default=1)
    args = parser.parse_args()
    server = BatchServer(polls_to_finish=args.polls_to_finish)
    server.port = args.port
    web.run_app(server.app(), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
