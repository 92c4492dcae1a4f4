"""``apidistill estimate config.yaml`` (wired in apidistill/cli/__init__.py): tokens, dollars and time
for a run file, computed locally; no request is sent to any teacher."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from apidistill.cli.options import apply_skip_invalid, skip_invalid_option


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
    count_tokens: bool | None = typer.Option(
        None,
        "--count-tokens/--no-count-tokens",
        help="Anthropic teachers: exact input counts from the count_tokens endpoint "
        "(free, rate-limited, sends the prompts to Anthropic; default: teacher.count_tokens).",
    ),
    skip_invalid: bool | None = skip_invalid_option(),
) -> None:
    from apidistill.config import load_config
    from apidistill.costs.estimate import estimate as make_estimate
    from apidistill.costs.estimate import render_estimate
    from apidistill.data.prompts import skipped_report
    from apidistill.pipeline.teacher_requests import load_prompts
    from apidistill.progress import console as err_console

    cfg = load_config(config)
    apply_skip_invalid(cfg, skip_invalid)
    batch = load_prompts(cfg)
    if batch.skipped:  # on stderr: --json output stays parseable
        err_console.print(skipped_report(batch.skipped, batch.problems), highlight=False)
    rescore = _rescore_requests(cfg)
    requests = batch.requests + rescore
    counts = None
    if count_tokens if count_tokens is not None else cfg.teacher.count_tokens:
        counts = _anthropic_counts(cfg, requests)
    est = make_estimate(
        cfg,
        requests,
        expected_output_tokens=output_tokens,
        latency_s=latency,
        anthropic_counts=counts,
        rescore=rescore,
    )
    if as_json:
        typer.echo(json.dumps(est.model_dump(mode="json"), indent=2))
        return
    Console().print(render_estimate(est))


def _rescore_requests(cfg):  # type: ignore[no-untyped-def]
    """harvest.rescore: the imported answers' re-score requests (docs/import.md#rescore).
    Reading the imports sends no teacher request (a Files API download and the stored
    completions list are free reads); the terms of their models are checked here too."""
    if not (cfg.harvest.rescore and cfg.prompts.imports):
        return []
    from apidistill.importers.run import import_records, load_source
    from apidistill.pipeline.imports import DOWNLOADS, rescore_requests

    loads = [
        load_source(s, resolve=cfg.resolve_path, cache_dir=cfg.run_path / DOWNLOADS)
        for s in cfg.prompts.imports
    ]
    return rescore_requests(cfg, import_records(loads, cfg.policy).records)[0]


def _anthropic_counts(cfg, requests):  # type: ignore[no-untyped-def]
    """Ask Anthropic's count_tokens for every distinct request (teachers/anthropic_count.py)."""
    import asyncio

    from apidistill.costs.estimate import shared_prefix
    from apidistill.errors import ConfigError
    from apidistill.teachers import resolve_api_key
    from apidistill.teachers.anthropic_count import count_with_anthropic

    if cfg.teacher.provider != "anthropic":
        raise ConfigError(
            f"--count-tokens asks Anthropic's count_tokens endpoint; this teacher is "
            f"{cfg.teacher.provider}",
            key="teacher.provider",
            hint="drop --count-tokens: this teacher's input is counted locally",
        )
    return asyncio.run(
        count_with_anthropic(
            cfg.teacher,
            requests,
            prefix=shared_prefix(requests),
            api_key=resolve_api_key(cfg.teacher, None),
            base_url=cfg.teacher.base_url,
        )
    )
