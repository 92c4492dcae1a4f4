"""The HTTP server: OpenAI- and Anthropic-compatible endpoints over one :class:`ServeEngine`.

    GET  /health                        liveness (no auth)
    GET  /openapi.json                  this server's OpenAPI document (no auth)
    GET  /v1/models, /v1/models/{id}    OpenAI shape; Anthropic shape when the request
                                        carries an ``anthropic-version`` header
    POST /v1/chat/completions           OpenAI chat (stream, n, logprobs + top_logprobs ≤ 20)
    POST /v1/completions                OpenAI legacy completions (echo scoring, logprobs)
    POST /v1/messages                   Anthropic Messages (stream events, stop_sequences)
    POST /v1/messages/count_tokens      Anthropic token counting

Every error, including unknown paths, bad JSON and crashes inside a handler, is answered in
the calling API's own error shape; nothing a client sends can take the server down.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from apidistill.serve.anthropic_routes import router as anthropic_router
from apidistill.serve.anthropic_schema import CountTokensRequest, MessagesRequest
from apidistill.serve.engine import ServeEngine
from apidistill.serve.http_common import Admission, ServerContext, ServeSettings
from apidistill.serve.http_errors import APIError, error_body, flavor_of
from apidistill.serve.openai_routes import router as openai_router
from apidistill.serve.openai_schema import ChatRequest, CompletionRequest

__all__ = ["create_app", "run_server"]


def create_app(engine: ServeEngine, settings: ServeSettings) -> FastAPI:
    app = FastAPI(
        title="apidistill serve",
        docs_url=None,  # the HTML pages load scripts from a CDN; the document is enough
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    limit = engine.max_batch_size + settings.max_queue
    app.state.ctx = ServerContext(engine, settings, Admission(limit))
    app.state.started = int(time.time())
    app.include_router(openai_router)
    app.include_router(anthropic_router)
    _add_model_routes(app)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The server's OpenAPI document, with the request bodies it really validates.

    The POST handlers read their bodies themselves (to bound the size and answer errors in
    each API's own shape), so FastAPI cannot see them; the pydantic models that validate them
    are added here, and ``model`` is narrowed to the names this server answers to, so that a
    schema-driven client (or fuzzer) reaches generation instead of a 404.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    ctx: ServerContext = app.state.ctx
    bodies = {
        "/v1/chat/completions": ChatRequest,
        "/v1/completions": CompletionRequest,
        "/v1/messages": MessagesRequest,
        "/v1/messages/count_tokens": CountTokensRequest,
    }
    refs, top = models_json_schema(
        [(m, "validation") for m in bodies.values()], ref_template="#/components/schemas/{model}"
    )
    schemas = top.get("$defs", {})
    for model in bodies.values():
        props = schemas[model.__name__]["properties"]
        props["model"] = {**props["model"], "enum": list(ctx.model_names)}
    doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
    for path, model in bodies.items():
        doc["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(model, "validation")]}},
        }
    app.openapi_schema = doc
    return doc


def _add_model_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        ctx: ServerContext = app.state.ctx
        queued, running = ctx.engine.load()
        return {
            "status": "ok",
            "inflight": ctx.admission.inflight,
            "queued": queued,
            "running": running,
        }

    def model_card(request: Request, name: str) -> dict[str, Any]:
        if request.headers.get("anthropic-version"):
            created = (
                datetime.fromtimestamp(app.state.started, UTC).isoformat().replace("+00:00", "Z")
            )
            return {"type": "model", "id": name, "display_name": name, "created_at": created}
        return {
            "id": name,
            "object": "model",
            "created": app.state.started,
            "owned_by": "apidistill",
        }

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        ctx: ServerContext = app.state.ctx
        ctx.authorize(request)
        names = [ctx.settings.served_model_name]
        cards = [model_card(request, n) for n in names]
        if request.headers.get("anthropic-version"):
            return {"data": cards, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        ctx: ServerContext = app.state.ctx
        ctx.authorize(request)
        ctx.check_model(model_id)
        return model_card(request, ctx.settings.served_model_name)


def _add_error_handlers(app: FastAPI) -> None:
    def render(request: Request, err: APIError) -> Response:
        flavor = flavor_of(request.url.path)
        return JSONResponse(error_body(err, flavor), status_code=err.status, headers=err.headers())

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return render(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            msg = f"Method {request.method} is not allowed for {request.url.path}."
        return render(request, APIError(exc.status_code, msg))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        print(
            f"apidistill serve: {type(exc).__name__} in {request.url.path}: {exc}", file=sys.stderr
        )
        return render(request, APIError(500, f"Internal server error ({type(exc).__name__})."))


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting so that port 0 resolves to a real port we can announce."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_server(
    app: FastAPI,
    sock: socket.socket,
    *,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` on an already-bound socket until SIGINT/SIGTERM; ``on_ready`` runs once
    the server accepts connections."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def main() -> None:
        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.02)
            if on_ready is not None:
                on_ready()

        watcher = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            ctx: ServerContext = app.state.ctx
            await ctx.engine.aclose()

    asyncio.run(main())
