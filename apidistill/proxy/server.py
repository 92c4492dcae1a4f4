"""Start the proxy: check the teacher's terms, open the capture store, restore the budget,
report what the last run left in flight, then serve: with the proxy's own HTTP/1.1 front
(:mod:`apidistill.proxy.http_front`) when httptools is installed, else (or with
``APIDISTILL_PROXY_SERVER=uvicorn``) with uvicorn.

Prints ``apidistill proxy: listening on http://HOST:PORT`` to stdout once the socket accepts
connections (tests and scripts read the port from it, ``--port 0`` picks a free one).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

from apidistill.costs.budget import Budget, format_usd
from apidistill.costs.prices import price_for_teacher
from apidistill.errors import ConfigError, PolicyDenied, register_secret
from apidistill.policy.engine import decide_for_teacher, enforce
from apidistill.proxy.app import PolicyView, ProxyState, build_app
from apidistill.proxy.asgi_fast import FastPath
from apidistill.proxy.capture_store import CaptureStore
from apidistill.proxy.config import ProxyConfig
from apidistill.proxy.enrich import enrich_top_k
from apidistill.proxy.redact import Redactor

__all__ = ["READY_PREFIX", "prepare", "serve_proxy"]

READY_PREFIX = "apidistill proxy: listening on "


def check_policy(cfg: ProxyConfig) -> PolicyView:
    """Whether the teacher's terms let the captures be used for ``policy.use``. A denial does
    not stop the proxy: it forwards, and keeps nothing."""
    decision = decide_for_teacher(cfg.teacher, cfg.policy)
    try:
        kept = enforce(decision, cfg.policy)
    except PolicyDenied as exc:
        return PolicyView(False, decision.decision, decision.id, str(exc))
    # the document, its date and the clause, as `apidistill run` prints them
    return PolicyView(True, kept.decision, kept.id, f"{kept.citation()}: {kept.reason}")


def _teacher_key(cfg: ProxyConfig) -> str | None:
    env = cfg.teacher.api_key_env
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise ConfigError(
            f"environment variable {env} is empty or not set",
            key="teacher.api_key_env",
            hint=f"export {env}=<the teacher's API key>, or remove api_key_env to pass each "
            "client's own key upstream",
        )
    register_secret(key)
    return key


def prepare(cfg: ProxyConfig, *, say: object = print) -> ProxyState:
    """Everything before serving; says at start what the proxy will and will not keep."""
    emit = say if callable(say) else print
    policy = check_policy(cfg)
    state = ProxyState(
        cfg=cfg, policy=policy, price=price_for_teacher(cfg.teacher), teacher_key=_teacher_key(cfg)
    )
    need_store = (cfg.capture.enabled and policy.capture_allowed) or cfg.budget is not None
    if need_store:
        red = cfg.capture.redaction
        state.store = CaptureStore(
            cfg.capture.path, Redactor(red.builtin, red.patterns), background_checkpoint=True
        )
        state.recovery = state.store.recover()
        if state.recovery.in_flight:
            emit(
                f"apidistill proxy: {state.recovery.in_flight} exchange(s) were in flight when "
                f"the last run stopped; {format_usd(state.recovery.at_risk_usd)} of their "
                "reservations stays counted as at risk (they may have been billed)",
            )
    if not policy.capture_allowed:
        emit(f"apidistill proxy: capture OFF — the teacher's terms deny it: {policy.reason}")
    elif not cfg.capture.enabled:
        emit("apidistill proxy: capture OFF (capture.enabled: false)")
    else:
        emit(
            f"apidistill proxy: capturing {cfg.capture.sample_rate:.0%} of exchanges into "
            f"{cfg.capture.path} ({policy.decision}: {policy.reason})"
        )
    if cfg.split is not None:
        state.split_share = cfg.split.share
        emit(f"apidistill proxy: split mode: {cfg.split.share:.0%} of traffic to the student")
    state.enrich_k, why = enrich_top_k(cfg.teacher, cfg.capture.logprobs)
    if cfg.capture.logprobs:
        emit(f"apidistill proxy: logprob enrichment: {why}")
    if cfg.budget is not None:
        assert state.store is not None
        spent, risk, today = state.store.totals()
        state.budget = Budget(cfg.budget.usd, per_day=cfg.budget.per_day_usd)
        state.budget.restore(spent=spent, at_risk=risk, spent_today=today)
        emit(
            f"apidistill proxy: budget {format_usd(state.budget.limit)}, "
            f"{format_usd(spent)} spent and {format_usd(risk)} at risk by earlier runs"
        )
    return state


def accelerators() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str, str]:
    """(loop factory, loop name, HTTP parser name): uvloop and httptools when installed (both
    C: less of the proxy's own CPU per request than asyncio's loop and the pure-Python h11,
    docs/proxy.md), else the standard library's loop and uvicorn's h11. uvicorn's own "auto"
    choice does not apply: the proxy runs ``Server.serve`` in a loop it makes itself."""
    try:
        import uvloop
    except ImportError:
        factory, loop = None, "asyncio (uvloop not installed)"
    else:
        factory, loop = uvloop.new_event_loop, "uvloop"
    try:
        import httptools  # noqa: F401
    except ImportError:
        http = "h11 (httptools not installed)"
    else:
        http = "httptools"
    return factory, loop, http


def use_front(http_name: str) -> bool:
    """Whether the front serves: it needs httptools; ``APIDISTILL_PROXY_SERVER=uvicorn``
    forces uvicorn (to compare the two, or to fall back if the front misbehaves)."""
    wanted = os.environ.get("APIDISTILL_PROXY_SERVER", "").strip().lower()
    if wanted not in ("", "front", "uvicorn"):
        raise ConfigError(
            f"APIDISTILL_PROXY_SERVER={wanted!r} is not a server the proxy knows",
            key="APIDISTILL_PROXY_SERVER",
            hint="set it to 'front' or 'uvicorn', or unset it",
        )
    return wanted != "uvicorn" and http_name == "httptools"


def serve_proxy(cfg: ProxyConfig) -> None:
    """Serve until interrupted (SIGINT or SIGTERM: answers in flight finish, the group
    commit flushes, the store closes).

    uvicorn binds the address itself (a socket handed in with ``sockets=`` loses
    ``TCP_NODELAY`` on accepted connections: every answer then waits ~40 ms for a delayed
    ACK); the ready line is printed once it listens, with the port it got."""
    state = prepare(cfg, say=lambda m: print(m, file=sys.stderr, flush=True))
    factory, loop_name, http_name = accelerators()
    front = use_front(http_name)
    print(
        f"apidistill proxy: event loop {loop_name}, HTTP parser {http_name}, "
        f"server {'apidistill front' if front else 'uvicorn'}",
        file=sys.stderr,
        flush=True,
    )
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            if front:
                runner.run(_serve_front(cfg, state))
            else:
                runner.run(_serve_uvicorn(cfg, state, http_name))
    finally:
        if state.store is not None:
            state.store.close()


def _ready(cfg: ProxyConfig, port: int) -> None:
    print(f"{READY_PREFIX}http://{cfg.host}:{port}", flush=True)


async def _serve_front(cfg: ProxyConfig, state: ProxyState) -> None:
    from apidistill.proxy.http_front import run_front

    await run_front(build_app(state), cfg.host, cfg.port, lambda port: _ready(cfg, port))


async def _serve_uvicorn(cfg: ProxyConfig, state: ProxyState, http_name: str) -> None:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            FastPath(build_app(state)), host=cfg.host, port=cfg.port, log_level="warning",
            access_log=False, lifespan="on", timeout_keep_alive=30, backlog=2048,
            # X-Forwarded-For must not make a remote client look loopback to /admin/split,
            # and the middleware costs CPU on every request
            proxy_headers=False,
            http="h11" if http_name.startswith("h11") else "httptools",
        )
    )  # fmt: skip

    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}", key="port")
        await asyncio.sleep(0.01)
    _ready(cfg, server.servers[0].sockets[0].getsockname()[1])
    await task
