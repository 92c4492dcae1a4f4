"""``apidistill import KIND [SOURCE]`` (wired in apidistill/cli/__init__.py): existing answers
→ a dataset folder in the harvest's format, with provenance and the terms decision of the model
that wrote them (apidistill/importers/, docs/import.md).

Exit codes: 0 imported; 2 an error (bad line without --skip-invalid, terms that refuse the
use, an unreachable API) through the CLI's error handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console

from apidistill.config import ImportConfig, ImportKind, PolicyConfig
from apidistill.errors import ConfigError

KINDS = get_args(ImportKind)


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--metadata wants KEY=VALUE, got {pair!r}", key="--metadata")
        out[key] = value
    return out


def _config(**kw: object) -> ImportConfig:
    from pydantic import ValidationError

    try:
        return ImportConfig.model_validate({k: v for k, v in kw.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(
            first["msg"].removeprefix("Value error, "),
            key=".".join(str(p) for p in first["loc"]) or None,
            hint="see `apidistill import --help` and docs/import.md",
        ) from None


def import_cmd(
    kind: Annotated[str, typer.Argument(help=f"Source kind: {', '.join(KINDS)}.")],
    source: Annotated[
        str | None,
        typer.Argument(
            help="File to read (an OpenAI file id file-… for openai_finetune); none for "
            "openai_stored."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (new).")] = Path(
        "imported"
    ),
    use: Annotated[
        str, typer.Option(help="Intended use of the student (policy.use).")
    ] = "internal",
    model: Annotated[
        str | None, typer.Option(help="Model that wrote the answers (openai_finetune, chat).")
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="Provider of --model (chat; openai_finetune: openai).")
    ] = None,
    requests: Annotated[
        Path | None, typer.Option(help="The batch's input file (openai_batch, anthropic_batch).")
    ] = None,
    metadata: Annotated[
        list[str], typer.Option("--metadata", help="openai_stored filter KEY=VALUE (repeat).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    after: Annotated[str | None, typer.Option(help="openai_stored: start after this id.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI API base URL.")] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Env var holding the OpenAI key (remote sources).")
    ] = "OPENAI_API_KEY",
    limit: Annotated[int | None, typer.Option(min=1, help="Import at most this many.")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip bad lines and report how many.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset already in --out.")] = False,
    policy_dir: Annotated[
        list[Path], typer.Option("--policy-dir", help="Extra policy folder (your agreements).")
    ] = [],  # noqa: B006
    authorization_reference: Annotated[
        str | None, typer.Option(help="Recorded provider authorization (policy).")
    ] = None,
    acknowledge_unknown: Annotated[
        str | None, typer.Option(help="Who checked unknown terms and why (policy).")
    ] = None,
) -> None:
    """Import existing answers into a dataset folder (see docs/import.md)."""
    from apidistill.data.prompts import skipped_report
    from apidistill.importers.run import import_records, load_source, write_import

    if kind not in KINDS:
        raise ConfigError(f"unknown import kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    src = _config(
        kind=kind,
        path=source,
        requests=str(requests) if requests else None,
        provider=provider,
        model=model,
        metadata=_metadata(metadata),
        after=after,
        base_url=base_url,
        api_key_env=api_key_env,
        limit=limit,
        skip_invalid=skip_invalid,
    )
    policy = PolicyConfig(
        use=use,  # type: ignore[arg-type]
        policy_dirs=[str(p) for p in policy_dir],
        authorization_reference=authorization_reference,
        acknowledge_unknown=acknowledge_unknown,
    )
    load = load_source(src, cache_dir=out.parent / f".{out.name}-downloads")
    result = import_records([load], policy)
    write_import(result, out, overwrite=overwrite)
    console = Console()
    if load.skipped:
        report = skipped_report(load.skipped, load.problems).replace("prompts:", "import:")
        console.print(f"[yellow]{report}[/]", highlight=False)
    if load.failed:
        console.print(
            f"[yellow]import[/]: {load.failed} request(s) in the data had no answer (errored, "
            "canceled or expired); they are listed in import.json",
            highlight=False,
        )
    summary = result.summary()
    for d in result.decisions.values():
        console.print(
            f"[bold]policy[/]: {d.provider} / {d.model}: {d.decision} for use '{d.use}' — "
            f"{d.citation()} [dim](engineering help, not legal advice)[/]",
            highlight=False,
        )
    console.print(
        f"[bold]import[/]: {summary['records']} records ({summary['with_logprobs']} with "
        f"logprobs) → {out}",
        highlight=False,
    )
