"""``apidistill serve``: put a model (or a distilled student) behind OpenAI- and
Anthropic-compatible endpoints.

On success the command prints one machine-readable line to stdout once the server accepts
connections::

    apidistill serve: ready on http://127.0.0.1:PORT/v1

(:mod:`apidistill.serve.launcher` waits for it). Bad options and unloadable models end with
a one-line :class:`~apidistill.errors.ApidistillError` (exit 2), never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from apidistill.errors import ConfigError, ModelLoadError

READY_PREFIX = "apidistill serve: ready on "


def serve(
    model: str = typer.Option(
        "smollm2-135m-instruct",
        "--model",
        help="Embedded model name, model folder, .gguf file, or an exported student folder.",
    ),
    adapter: str | None = typer.Option(None, "--adapter", help="LoRA adapter folder to apply."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    port: int = typer.Option(8000, "--port", help="Port; 0 picks a free one and prints it."),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="Model name clients send (default: --model)."
    ),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Require this environment variable's value as API key (Bearer or x-api-key).",
    ),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Sequences per batch."),
    max_queue: int = typer.Option(
        256, "--max-queue", help="Requests that may wait; more are answered 429/529."
    ),
    max_tokens_cap: int = typer.Option(2048, "--max-tokens-cap", help="Largest max_tokens."),
    max_n: int = typer.Option(8, "--max-n", help="Largest n (choices per request)."),
    max_body_bytes: int = typer.Option(
        4 * 1024 * 1024, "--max-body-bytes", help="Largest request body; bigger gets 413."
    ),
    prefix_cache: bool = typer.Option(
        True, "--prefix-cache/--no-prefix-cache", help="Reuse the KV cache of shared prefixes."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: cores)."),
) -> None:
    _check_options(port, max_batch_size, max_queue, max_tokens_cap, max_n, max_body_bytes)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(
                f"environment variable {api_key_env} is not set or empty",
                key="--api-key-env",
                hint=f"export {api_key_env}=<key>, or drop --api-key-env to serve without a key",
            )
    from apidistill.models import resolve_model

    resolve_model(model)  # a bad path fails here, before the slow imports
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{adapter}: not a LoRA adapter folder (no adapter_config.json)",
            hint="give the folder the trainer exported (it holds adapter_config.json)",
        )
    from apidistill.serve.app import bind_socket, create_app, run_server
    from apidistill.serve.engine import Engine
    from apidistill.serve.http_common import ServeSettings

    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            key="--port",
            hint="pick another --port, or --port 0 for a free one",
        ) from None
    bound = sock.getsockname()[1]
    engine = Engine.from_spec(
        model,
        adapter=adapter,
        max_batch_size=max_batch_size,
        num_threads=threads,
        prefix_cache=prefix_cache,
    )
    name = served_model_name or model
    settings = ServeSettings(
        served_model_name=name,
        aliases=tuple(a for a in (model,) if a != name),
        api_key=api_key,
        max_queue=max_queue,
        max_tokens_cap=max_tokens_cap,
        max_n=max_n,
        max_body_bytes=max_body_bytes,
    )
    shown = f"[{host}]" if ":" in host else host
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"apidistill serve: warning: listening on {host} without an API key; anyone who can "
            "reach this address can use the model (set --api-key-env)",
            file=sys.stderr,
        )

    def ready() -> None:
        print(f"{READY_PREFIX}http://{shown}:{bound}/v1", flush=True)

    run_server(create_app(engine, settings), sock, on_ready=ready)


def _check_options(port: int, *limits: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"must be 0-65535, got {port}", key="--port")
    names = ("--max-batch-size", "--max-queue", "--max-tokens-cap", "--max-n", "--max-body-bytes")
    for name, value in zip(names, limits, strict=True):
        least = 0 if name == "--max-queue" else 1
        if value < least:
            raise ConfigError(f"must be at least {least}, got {value}", key=name)
