"""Serve stage: a model (teacher or distilled student) behind OpenAI- and Anthropic-compatible
HTTP endpoints, and the in-process engine behind them.

    ServeEngine.from_spec(model, adapter=None, max_batch_size=16)   batched generation + logprobs
    launch_server(model, ...) -> ServerHandle                  ``apidistill serve`` as a child
    create_app(engine, settings)                               the FastAPI app itself

Names load lazily: ``apidistill --help`` imports this package and must not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apidistill.serve.app import create_app
    from apidistill.serve.engine import EngineOutput, ServeEngine, StreamDelta
    from apidistill.serve.http_common import ServeSettings
    from apidistill.serve.launcher import ServerHandle, launch_server

__all__ = [
    "EngineOutput",
    "ServeEngine",
    "ServeSettings",
    "ServerHandle",
    "StreamDelta",
    "create_app",
    "launch_server",
]

_HOMES = {
    "ServeEngine": "apidistill.serve.engine",
    "EngineOutput": "apidistill.serve.engine",
    "StreamDelta": "apidistill.serve.engine",
    "ServeSettings": "apidistill.serve.http_common",
    "ServerHandle": "apidistill.serve.launcher",
    "launch_server": "apidistill.serve.launcher",
    "create_app": "apidistill.serve.app",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'apidistill.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
