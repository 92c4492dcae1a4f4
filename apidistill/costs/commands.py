"""``apidistill estimate config.yaml`` (wired in apidistill/cli.py): tokens, dollars and time
for a run file, computed locally; no request is sent to any teacher."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def estimate(
    config: Path = typer.Argument(..., help="YAML run file."),
    output_tokens: float | None = typer.Option(
        None,
        "--output-tokens",
        help="Expected mean output tokens per request (default: gold "
        "answers' mean length, else max_tokens / 2).",
    ),
    latency: float | None = typer.Option(
        None, "--latency", help="Seconds per request, to bound time by concurrency."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    from apidistill.config import load_config
    from apidistill.costs.estimate import estimate as make_estimate
    from apidistill.costs.estimate import render_estimate
    from apidistill.pipeline.requests import build_requests

    cfg = load_config(config)
    requests = build_requests(cfg)
    est = make_estimate(cfg, requests, expected_output_tokens=output_tokens, latency_s=latency)
    if as_json:
        typer.echo(json.dumps(est.model_dump(mode="json"), indent=2))
        return
    Console().print(render_estimate(est))
