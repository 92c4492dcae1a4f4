"""A loopback OpenAI server for the importers' remote sources, following the API reference:

- ``GET /v1/files/{file_id}/content``: the file's bytes (404 ``invalid_request_error`` when
  unknown);
- ``GET /v1/chat/completions``: stored completions, filtered by ``model`` and
  ``metadata[key]=value``, paged by ``after``/``limit`` (default 20) with ``has_more``;
- ``GET /v1/chat/completions/{id}/messages``: the stored input messages (each with an
  ``id``, ``content_parts: null``), paged the same way;
- ``POST /v1/chat/completions``: a deterministic answer (with logprobs when asked) from
  :mod:`apidistill.testing.provider_payloads`, for the re-score tests.

Every request needs ``Authorization: Bearer <key>`` (401 otherwise, as OpenAI answers).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apidistill.testing import provider_payloads as pp
from apidistill.testing.threaded_chat import ThreadedChatServer


class StoreServer(ThreadedChatServer):
    def __init__(self, key: str = "sk-test-import") -> None:
        self.key = key
        self.files: dict[str, bytes] = {}
        self.stored: list[dict[str, Any]] = []  # chat.completion objects (with metadata)
        self.inputs: dict[str, list[dict[str, Any]]] = {}
        self.list_calls: list[dict[str, str]] = []
        self.message_calls: list[dict[str, str]] = []
        self.chat_bodies: list[dict[str, Any]] = []
        super().__init__()

    # -- content

    def add_stored(
        self,
        cid: str,
        model: str,
        messages: list[dict[str, Any]],
        answer: str,
        metadata: dict[str, str] | None = None,
        logprobs: Any = None,
    ) -> None:
        self.stored.append({
            "id": cid, "object": "chat.completion", "created": 1700000000 + len(self.stored),
            "model": model, "metadata": metadata or {},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer,
                         "refusal": None, "annotations": []},
                         "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            "system_fingerprint": "fp_test", "service_tier": "default",
        })  # fmt: skip
        self.inputs[cid] = [
            {"id": f"{cid}-{i}", "content_parts": None, "name": None, **m}
            for i, m in enumerate(messages)
        ]

    # -- server

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/files/{fid}/content", self._file)
        app.router.add_get("/v1/chat/completions", self._list)
        app.router.add_get("/v1/chat/completions/{cid}/messages", self._messages)
        app.router.add_post("/v1/chat/completions", self._chat)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    def _unauthorized(self) -> web.Response:
        return web.json_response(
            pp.openai_error("Incorrect API key provided.", code="invalid_api_key"), status=401
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        fid = request.match_info["fid"]
        if fid not in self.files:
            return web.json_response(
                pp.openai_error(f"No such File object: {fid}", param="id"), status=404
            )
        return web.Response(body=self.files[fid], content_type="application/octet-stream")

    @staticmethod
    def _page(rows: list[dict[str, Any]], q: Any) -> dict[str, Any] | web.Response:
        if q.get("order") == "desc":
            rows = list(reversed(rows))
        if "after" in q:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(q["after"]) + 1 :] if q["after"] in ids else []
        limit = int(q.get("limit", "20"))
        page = rows[:limit]
        return {
            "object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rows) > limit,
        }  # fmt: skip

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        q = request.query
        self.list_calls.append(dict(q))
        want = {k[len("metadata[") : -1]: v for k, v in q.items() if k.startswith("metadata[")}
        rows = [
            c for c in self.stored
            if ("model" not in q or c["model"] == q["model"])
            and all(c["metadata"].get(k) == v for k, v in want.items())
        ]  # fmt: skip
        return web.json_response(self._page(rows, q))

    async def _messages(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        cid = request.match_info["cid"]
        self.message_calls.append({"id": cid, **request.query})
        if cid not in self.inputs:
            return web.json_response(pp.openai_error(f"No completion {cid}"), status=404)
        return web.json_response(self._page(self.inputs[cid], request.query))

    async def _chat(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        self.chat_bodies.append(body)
        return web.json_response(pp.openai_chat_completion(body))
