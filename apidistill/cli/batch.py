"""``apidistill batch list|status|cancel RUN.yaml``: the run's provider batches, from its journal.

A Batch-API harvest journals every batch id before it polls it (harvest/batch_run.py), so
the run file is enough to find the batches a run started: ``list`` reads the journal only,
``status`` asks the provider where each stands, ``cancel`` cancels those still running.
Only ids this run journaled are accepted, so a typo never cancels someone else's batch.
Ctrl-C on a batch harvest leaves the batches running (and billing) at the provider;
:func:`apidistill.harvest.batch_journal.interrupted_batch_lines` is what the CLI then prints.
"""

from __future__ import annotations

import asyncio
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from apidistill.config import RunConfig, load_config
from apidistill.errors import ConfigError

if TYPE_CHECKING:
    from apidistill.teachers.batch import BatchClient, BatchStatus

from apidistill.harvest.batch_journal import JournaledBatch, journaled_batches

__all__ = ["batch_app"]

batch_app = typer.Typer(no_args_is_help=True, add_completion=False)


def _journal_of(cfg: RunConfig) -> tuple[Path, list[JournaledBatch]]:
    from apidistill.pipeline.layout import RunLayout

    journal = RunLayout(cfg.run_path).journal
    batches = journaled_batches(journal)
    if not batches:
        where = "has no journal yet" if not journal.is_file() else "journaled no batch"
        raise ConfigError(
            f"this run {where}: nothing to show",
            file=str(journal),
            hint="batches are made by 'apidistill harvest' with harvest.use_batch_api: true",
        )
    return journal, batches


def _pick(batches: list[JournaledBatch], batch_id: str | None, *, default_open: bool):
    if batch_id is None:
        chosen = [b for b in batches if b.batch_id is not None]
        return [b for b in chosen if b.open] if default_open else chosen
    found = [b for b in batches if b.batch_id == batch_id]
    if not found:
        known = ", ".join(str(b.batch_id) for b in batches if b.batch_id) or "none"
        raise ConfigError(
            f"batch {batch_id!r} is not one this run journaled (its batches: {known})",
            key="--id",
            hint="'apidistill batch list RUN.yaml' lists them; other batches are not touched",
        )
    return found


def _client(cfg: RunConfig) -> BatchClient:
    from apidistill.teachers import make_batch_client

    return make_batch_client(cfg.teacher, timeout_s=cfg.harvest.timeout_s)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _counts(s: BatchStatus) -> str:
    c = s.counts
    return (
        f"total {c.total}, succeeded {c.succeeded}, errored {c.errored}, expired {c.expired}, "
        f"canceled {c.canceled}, processing {c.processing}"
    )


async def _each(cfg: RunConfig, chosen: list[JournaledBatch], cancel: bool) -> list[BatchStatus]:
    client = _client(cfg)
    try:
        out = []
        for b in chosen:
            assert b.batch_id is not None
            out.append(await (client.cancel(b.batch_id) if cancel else client.poll(b.batch_id)))
        return out
    finally:
        await client.aclose()


@batch_app.command("list")
def list_cmd(config: Path = typer.Argument(..., help="YAML run file.")) -> None:
    """The batches this run's journal recorded (reads the journal only; sends nothing)."""
    cfg = load_config(config)
    _, batches = _journal_of(cfg)
    for b in batches:
        typer.echo(
            f"{b.batch_id or '(not uploaded)'}  {b.state}  {b.n_items} requests  "
            f"created {_when(b.created_at)}  chunk {b.chunk_key}"
        )
    running = sum(b.open for b in batches)
    typer.echo(f"{len(batches)} batch(es), {running} not collected yet")


@batch_app.command("status")
def status_cmd(
    config: Path = typer.Argument(..., help="YAML run file."),
    batch_id: str | None = typer.Option(None, "--id", help="Only this batch (default: all)."),
) -> None:
    """Ask the provider where each of this run's batches stands."""
    cfg = load_config(config)
    _, batches = _journal_of(cfg)
    chosen = _pick(batches, batch_id, default_open=False)
    for b, s in zip(chosen, asyncio.run(_each(cfg, chosen, cancel=False)), strict=True):
        typer.echo(f"{s.batch_id}  {s.provider_status}  {_counts(s)}  (journal: {b.state})")
        for err in s.errors:
            typer.echo(f"  error: {err}")


@batch_app.command("cancel")
def cancel_cmd(
    config: Path = typer.Argument(..., help="YAML run file."),
    batch_id: str | None = typer.Option(
        None, "--id", help="Only this batch (default: every batch not collected yet)."
    ),
) -> None:
    """Cancel this run's batches at the provider. Work they already finished is billed and
    kept: the next 'apidistill harvest' collects it (and resubmits what was cancelled)."""
    cfg = load_config(config)
    _, batches = _journal_of(cfg)
    chosen = _pick(batches, batch_id, default_open=True)
    if not chosen:
        typer.echo("no batch of this run is running: nothing to cancel")
        return
    for s in asyncio.run(_each(cfg, chosen, cancel=True)):
        if s.state == "in_progress":
            what = f"cancelling ({s.provider_status})"
        else:
            what = f"already ended ({s.provider_status}): nothing left to cancel"
        typer.echo(f"{s.batch_id}: {what}; {_counts(s)}")
    run_file = shlex.quote(str(config))
    typer.echo(
        "items that already ran are billed and kept; 'apidistill harvest "
        f"{run_file}' collects them from the journal, and resubmits the items that were "
        "cancelled"
    )
