"""``apidistill proxy``: an OpenAI- and Anthropic-compatible reverse proxy in front of the
teacher that captures live traffic for distillation (docs/proxy.md).

``apidistill proxy --config proxy.yaml`` serves; it prints
``apidistill proxy: listening on http://HOST:PORT`` to stdout once it accepts connections, and
what it keeps (capture on/off and why, budget, exchanges left in flight by the last run) to
stderr. ``apidistill proxy promote --share 0.25`` and ``apidistill proxy rollback`` change a
running proxy's split share (``POST /admin/split``) without a restart.
"""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError

proxy_app = typer.Typer(no_args_is_help=False, add_completion=False)

_URL = typer.Option(
    "http://127.0.0.1:8080",
    "--url",
    help="The running proxy (its admin endpoint is loopback-only).",
)


@proxy_app.callback(invoke_without_command=True)
def proxy(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="Proxy settings file (docs/proxy.md)."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind (overrides the file)."),
    port: int | None = typer.Option(
        None, "--port", help="Port (overrides the file); 0 picks a free one and prints it."
    ),
    capture_path: Path | None = typer.Option(
        None, "--capture-path", help="Capture store file (overrides capture.path)."
    ),
) -> None:
    """Forward OpenAI/Anthropic calls to the teacher and capture them (with --config)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise ConfigError(
            "--config is required to start the proxy", hint="apidistill proxy --config proxy.yaml"
        )
    from apidistill.proxy.config import load_proxy_config
    from apidistill.proxy.server import serve_proxy

    cfg = load_proxy_config(config)
    if host is not None:
        cfg = cfg.model_copy(update={"host": host})
    if port is not None:
        cfg = cfg.model_copy(update={"port": port})
    if capture_path is not None:
        cfg = cfg.model_copy(
            update={"capture": cfg.capture.model_copy(update={"path": str(capture_path)})}
        )
    serve_proxy(cfg)


def _set_share(url: str, share: float) -> None:
    import httpx2

    try:
        r = httpx2.post(url.rstrip("/") + "/admin/split", json={"share": share}, timeout=10)
    except httpx2.HTTPError as exc:
        raise ConfigError(f"cannot reach the proxy at {url}: {exc}", key="--url") from None
    if r.status_code != 200:
        raise ConfigError(f"the proxy refused: {r.json().get('error', r.text)}", key="--share")
    typer.echo(f"split share is now {r.json()['share']:.0%} (student)")


@proxy_app.command("promote")
def promote(
    share: float = typer.Option(..., "--share", help="Share of traffic the student answers, 0-1."),
    url: str = _URL,
) -> None:
    """Move a (sticky) share of traffic to the student, without a restart."""
    _set_share(url, share)


@proxy_app.command("rollback")
def rollback(url: str = _URL) -> None:
    """Send all traffic back to the teacher (split share 0), without a restart."""
    _set_share(url, 0.0)
