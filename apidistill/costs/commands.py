"""``apidistill estimate config.yaml`` (wired in apidistill/cli.py): tokens, dollars and time
for a run file, computed locally; no request is sent to any teacher."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from apidistill.cli_options import apply_skip_invalid, skip_invalid_option


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
    skip_invalid: bool | None = skip_invalid_option(),
) -> None:
    from apidistill.config import load_config
    from apidistill.costs.estimate import estimate as make_estimate
    from apidistill.costs.estimate import render_estimate
    from apidistill.data.prompts import skipped_report
    from apidistill.pipeline.requests import load_prompts
    from apidistill.progress import console as err_console

    cfg = load_config(config)
    apply_skip_invalid(cfg, skip_invalid)
    batch = load_prompts(cfg)
    if batch.skipped:  # on stderr: --json output stays parseable
        err_console.print(skipped_report(batch.skipped, batch.problems), highlight=False)
    requests = batch.requests
    est = make_estimate(cfg, requests, expected_output_tokens=output_tokens, latency_s=latency)
    if as_json:
        typer.echo(json.dumps(est.model_dump(mode="json"), indent=2))
        return
    Console().print(render_estimate(est))
