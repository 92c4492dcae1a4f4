"""``apidistill proxy``: an OpenAI- and Anthropic-compatible reverse proxy in front of the
teacher that captures live traffic for distillation (docs/proxy.md).

Prints ``apidistill proxy: listening on http://HOST:PORT`` to stdout once it accepts
connections; what it keeps (capture on/off and why, budget, exchanges left in flight by the
last run) goes to stderr at start.
"""

from __future__ import annotations

from pathlib import Path

import typer


def proxy(
    config: Path = typer.Option(..., "--config", help="Proxy settings file (docs/proxy.md)."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (overrides the file)."),
    port: int | None = typer.Option(
        None, "--port", help="Port (overrides the file); 0 picks a free one and prints it."
    ),
    capture_path: Path | None = typer.Option(
        None, "--capture-path", help="Capture store file (overrides capture.path)."
    ),
) -> None:
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
