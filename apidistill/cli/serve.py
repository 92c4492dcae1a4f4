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
from typing import Any

import typer

from apidistill.config import DEFAULT_MODEL, ServeConfig
from apidistill.errors import ConfigError, ModelLoadError, register_secret

READY_PREFIX = "apidistill serve: ready on "


def serve(
    model: str | None = typer.Option(
        None,
        "--model",
        help="Embedded model name, model folder, .gguf file, or an exported student folder "
        "(default: the run's exported student with --config, else smollm2-135m-instruct).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Run file: serve its exported student with its 'serve:' settings (host, port, "
        "API key, caps); options given here win over the file.",
    ),
    adapter: str | None = typer.Option(None, "--adapter", help="LoRA adapter folder to apply."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (loopback default)."),
    port: int | None = typer.Option(
        None, "--port", help="Port (default 8000); 0 picks a free one and prints it."
    ),
    served_model_name: str | None = typer.Option(
        None,
        "--served-model-name",
        help="Model name clients send (default: a model folder's name, e.g. 'student' for "
        "runs/<name>/student; else --model).",
    ),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Require this environment variable's value as API key (Bearer or x-api-key).",
    ),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size", help="Sequences per batch (default 16)."
    ),
    max_queue: int | None = typer.Option(
        None, "--max-queue", help="Requests that may wait (default 256); more get 429/529."
    ),
    max_tokens_cap: int | None = typer.Option(
        None, "--max-tokens-cap", help="Largest max_tokens (default 2048)."
    ),
    max_n: int | None = typer.Option(
        None, "--max-n", help="Largest n, choices per request (default 8)."
    ),
    max_body_bytes: int | None = typer.Option(
        None, "--max-body-bytes", help="Largest request body (default 4 MiB); bigger gets 413."
    ),
    prefix_cache: bool = typer.Option(
        True, "--prefix-cache/--no-prefix-cache", help="Reuse the KV cache of shared prefixes."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Engine threads (default: physical cores)."
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Engine: auto (llama.cpp for a GGUF when llama-cpp-python is installed, else "
        "transformers), llamacpp, vllm, transformers.",
    ),
    device: str | None = typer.Option(
        None, "--device", help="transformers backend: auto (CUDA if seen), cpu, cuda, mps."
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="transformers backend: auto (bfloat16 on CUDA, else float32), "
        "float32, bfloat16, float16.",
    ),
) -> None:
    given = {
        "host": host,
        "port": port,
        "api_key_env": api_key_env,
        "max_batch_size": max_batch_size,
        "max_queue": max_queue,
        "max_tokens_cap": max_tokens_cap,
        "max_n": max_n,
        "max_body_bytes": max_body_bytes,
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "threads": threads,
    }
    opts, model, name = resolve_serve_options(config, model, served_model_name, given)
    _check_options(
        opts.port,
        opts.max_batch_size,
        opts.max_queue,
        opts.max_tokens_cap,
        opts.max_n,
        opts.max_body_bytes,
    )
    api_key = None
    if opts.api_key_env:
        api_key = os.environ.get(opts.api_key_env)
        if not api_key:
            raise ConfigError(
                f"environment variable {opts.api_key_env} is not set or empty",
                key="--api-key-env" if api_key_env else "serve.api_key_env",
                file=str(config) if config and not api_key_env else None,
                hint=f"export {opts.api_key_env}=<key>, or serve without a key",
            )
        register_secret(api_key)  # never in the server's messages, whatever the key's shape
    from apidistill.model_loading import resolve_model

    resolve_model(model)  # a bad path fails here, before the slow imports
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{adapter}: not a LoRA adapter folder (no adapter_config.json)",
            hint="give the folder the trainer exported (it holds adapter_config.json)",
        )
    from apidistill.serve.app import bind_socket, create_app, run_server
    from apidistill.serve.backends import resolve_backend
    from apidistill.serve.http_common import ServeSettings

    # checked before the socket is bound and before any weights load
    backend_name = resolve_backend(opts.backend, model, adapter=adapter, device=opts.device)
    if backend_name == "transformers":
        from apidistill.devices import select_device

        select_device(opts.device, opts.dtype, key="--device" if device else "serve.device")

    host = opts.host
    try:
        sock = bind_socket(host, opts.port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{opts.port}: {exc.strerror or exc}",
            key="--port",
            hint="pick another --port, or --port 0 for a free one",
        ) from None
    bound = sock.getsockname()[1]
    from apidistill.serve.backends import load_engine

    engine = load_engine(
        model,
        backend=backend_name,
        adapter=adapter,
        max_batch_size=opts.max_batch_size,
        num_threads=opts.threads,
        device=opts.device,
        dtype=opts.dtype,
        prefix_cache=prefix_cache,
        model_name=name,
    )
    settings = ServeSettings(
        served_model_name=name,
        aliases=tuple(a for a in (model,) if a != name),
        api_key=api_key,
        max_queue=opts.max_queue,
        max_tokens_cap=opts.max_tokens_cap,
        max_n=opts.max_n,
        max_body_bytes=opts.max_body_bytes,
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


def resolve_serve_options(
    config: Path | None,
    model: str | None,
    served_model_name: str | None,
    given: dict[str, Any],
) -> tuple[ServeConfig, str, str]:
    """Settings, model and served name: the options given on the command line, else the run
    file's ``serve:`` section (with ``--config``), else :class:`ServeConfig`'s defaults.

    With ``--config`` and no ``--model`` the model is the run's exported student, served as
    ``student`` (the name the pipeline's drop-in check and the README use).
    """
    base = ServeConfig()
    if config is not None:
        from apidistill.config import load_config
        from apidistill.pipeline.layout import RunLayout

        cfg = load_config(config)
        base = cfg.serve
        if model is None:
            student = RunLayout(cfg.run_path).student
            if not student.is_dir():
                raise ConfigError(
                    f"the run has no exported student yet ({student})",
                    file=str(config),
                    hint=f"finish the run first (apidistill run {config}), or pass --model",
                )
            model = str(student)
            served_model_name = served_model_name or "student"
    opts = base.model_copy(update={k: v for k, v in given.items() if v is not None})
    model = model or DEFAULT_MODEL
    return opts, model, served_model_name or default_served_name(model)


def default_served_name(model: str) -> str:
    """The name clients send when ``--served-model-name`` is not given.

    A model folder is served under its folder's name, so ``--model runs/tickets/student``
    answers to ``model="student"`` as the README and quickstart call it (the path the server
    was started with stays an alias, for clients that send it). An embedded model, hub name or
    ``.gguf`` file is served under the name given.
    """
    path = Path(model).expanduser()
    if path.suffix != ".gguf" and path.is_dir():
        return path.resolve().name or model
    return model


def _check_options(port: int, *limits: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"must be 0-65535, got {port}", key="--port")
    names = ("--max-batch-size", "--max-queue", "--max-tokens-cap", "--max-n", "--max-body-bytes")
    for name, value in zip(names, limits, strict=True):
        least = 0 if name == "--max-queue" else 1
        if value < least:
            raise ConfigError(f"must be at least {least}, got {value}", key=name)
