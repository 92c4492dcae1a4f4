"""CLI commands of the data stage: ``apidistill data inspect|filter|balance|split|card``.

Each command reads a dataset folder, and the transforming ones write a new folder (never in
place: the harvested data stays as it was paid for). Settings come from flags, or from the
``dataset`` section of a run file with ``--config``; flags win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from apidistill.config import BalanceConfig, DatasetConfig, FilterConfig, SplitConfig
from apidistill.errors import ConfigError

data_app = typer.Typer(no_args_is_help=True)
out = Console()

Folder = Annotated[
    Path, typer.Argument(help="Dataset folder (written by harvest or a data command).")
]
OutFolder = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for the result (must be new).")
]
RunFile = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Run file whose `dataset` section gives defaults."),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a dataset already in --out.")]
Codec = Annotated[
    str, typer.Option("--codec", help="Logprob storage: fp16 (exact to float16) or q8.")
]


def _dataset_cfg(config: Path | None) -> DatasetConfig:
    if config is None:
        return DatasetConfig()
    from apidistill.config import load_config

    return load_config(config).dataset


def _codec(value: str) -> str:
    if value not in ("fp16", "q8"):
        raise ConfigError(f"unknown codec {value!r}", key="--codec", hint="use fp16 or q8")
    return value


def _counts_table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(str(c) for c in r))
    return table


@data_app.command("inspect")
def inspect(
    path: Folder,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    show: Annotated[int, typer.Option(help="Print this many example records.")] = 3,
) -> None:
    """Show what a dataset holds: files, splits, labels, tokens, examples."""
    from apidistill.data.card import token_stats
    from apidistill.data.store import dataset_status, load_records

    status = dataset_status(path)
    records = load_records(path, split)
    bpt = status.bytes_per_token
    rows = [
        ("shards", len(status.shards)),
        ("records in shards", status.shard_rows),
        ("bytes on disk", f"{status.bytes:,}"),
        ("bytes per logprob token", f"{bpt:.1f}" if bpt else "—"),
        ("codecs", ", ".join(sorted({s.codec for s in status.shards})) or "—"),
    ]
    out.print(_counts_table(f"Dataset {path}", ("", "value"), rows))
    from collections import Counter

    labels = Counter(r.label or "(none)" for r in records)
    splits = Counter(r.split or "unsplit" for r in records)
    out.print(_counts_table("Splits", ("split", "records"), sorted(splits.items())))
    out.print(_counts_table("Labels", ("label", "records"), labels.most_common()))
    ts = token_stats(records)["output_tokens"]
    if ts.get("count"):
        keys = ("total", "mean", "median", "p95", "max")
        out.print(_counts_table("Output tokens", keys, [tuple(ts[k] for k in keys)]))
    for rec in records[:show]:
        text = rec.prompt if rec.prompt is not None else (rec.messages or [])[-1].content
        out.print(
            f"[bold]{rec.id}[/] [dim]{rec.label or ''}[/]\n  in:  {text[:160]!r}\n  out: {rec.completion[:160]!r}"
        )


@data_app.command("filter")
def filter_cmd(
    path: Folder,
    out_dir: OutFolder,
    config: RunFile = None,
    max_output_chars: Annotated[int | None, typer.Option(help="Drop longer outputs.")] = None,
    regex: Annotated[str | None, typer.Option(help="Outputs must fully match this regex.")] = None,
    label_set: Annotated[str | None, typer.Option(help="Comma-separated allowed outputs.")] = None,
    keep_truncated: Annotated[
        bool, typer.Option(help="Keep finish_reason=length outputs.")
    ] = False,
    overwrite: Overwrite = False,
    codec: Codec = "fp16",
) -> None:
    """Drop errors, refusals, truncated/empty/overlong and invalid outputs; count each reason."""
    from apidistill.data.filters import apply_filters
    from apidistill.data.store import load_records, save_records

    cfg: FilterConfig = _dataset_cfg(config).filters
    updates: dict[str, object] = {}
    if max_output_chars is not None:
        updates["max_output_chars"] = max_output_chars
    if regex is not None:
        updates["regex"] = regex
    if label_set is not None:
        updates["label_set"] = [s.strip() for s in label_set.split(",") if s.strip()]
    if keep_truncated:
        updates["drop_truncated"] = False
    cfg = FilterConfig.model_validate({**cfg.model_dump(), **updates})
    res = apply_filters(load_records(path), cfg)
    save_records(res.kept, out_dir, codec=_codec(codec), overwrite=overwrite)  # type: ignore[arg-type]
    rows = [
        (k, v, "; ".join(f"{i}: {d}" for i, d in res.examples.get(k, [])[:2]))
        for k, v in res.dropped_by_reason.items()
    ]
    out.print(_counts_table("Dropped by reason", ("reason", "records", "examples"), rows))
    out.print(f"kept {len(res.kept)} of {len(res.kept) + res.dropped} → {out_dir}")


def _parse_target(text: str) -> dict[str, float]:
    target: dict[str, float] = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        try:
            target[name.strip()] = float(share)
        except ValueError:
            raise ConfigError(
                f"cannot read {part!r}", key="--target", hint="write class=share pairs: a=0.5,b=0.5"
            ) from None
        if not sep or not name.strip():
            raise ConfigError(f"cannot read {part!r}", key="--target", hint="write a=0.5,b=0.5")
    return target


@data_app.command("balance")
def balance_cmd(
    path: Folder,
    out_dir: OutFolder,
    config: RunFile = None,
    by: Annotated[str | None, typer.Option(help="label, length, or a metadata field.")] = None,
    max_per_class: Annotated[
        int | None, typer.Option(help="Cap every class at this count.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Target shares, e.g. a=0.5,b=0.25,c=0.25.")
    ] = None,
    seed: int = 0,
    overwrite: Overwrite = False,
    codec: Codec = "fp16",
) -> None:
    """Cap majority classes or meet target shares; print the before/after histogram."""
    from apidistill.data.balance import balance
    from apidistill.data.store import load_records, save_records

    base = _dataset_cfg(config).balance or BalanceConfig()
    updates: dict[str, object] = {}
    if by is not None:
        updates["by"] = by
    if max_per_class is not None:
        updates["max_per_class"] = max_per_class
    if target is not None:
        updates["target"] = _parse_target(target)
    cfg = BalanceConfig.model_validate({**base.model_dump(), **updates})
    res = balance(load_records(path), cfg, seed=seed)
    save_records(res.kept, out_dir, codec=_codec(codec), overwrite=overwrite)  # type: ignore[arg-type]
    out.print(res.histogram_text(), highlight=False)
    if res.under_represented:
        need = ", ".join(f"{c}: {n}" for c, n in res.under_represented.items())
        out.print(f"[yellow]under-represented[/] (more examples needed): {need}")
    out.print(f"kept {len(res.kept)} → {out_dir}")


@data_app.command("split")
def split_cmd(
    path: Folder,
    out_dir: OutFolder,
    config: RunFile = None,
    train: Annotated[float | None, typer.Option(help="Share for train.")] = None,
    validation: Annotated[float | None, typer.Option(help="Share for validation.")] = None,
    test: Annotated[float | None, typer.Option(help="Share for test.")] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed.")] = None,
    stratify_by: Annotated[
        str | None, typer.Option(help="label, length or a metadata field.")
    ] = None,
    dedupe: Annotated[
        str | None, typer.Option(help="none, exact or near (groups kept together).")
    ] = None,
    overwrite: Overwrite = False,
    codec: Codec = "fp16",
) -> None:
    """Stratified, seeded train/validation/test split; duplicate groups never cross splits."""
    from apidistill.data.splits import make_splits
    from apidistill.data.store import load_records, save_splits

    ds = _dataset_cfg(config)
    updates = {
        k: v
        for k, v in {
            "train": train,
            "validation": validation,
            "test": test,
            "seed": seed,
            "stratify_by": stratify_by,
        }.items()
        if v is not None
    }
    cfg = SplitConfig.model_validate({**ds.splits.model_dump(), **updates})
    mode = dedupe or ds.dedupe
    if mode not in ("none", "exact", "near"):
        raise ConfigError(
            f"unknown dedupe mode {mode!r}", key="--dedupe", hint="none, exact or near"
        )
    res = make_splits(load_records(path), cfg, dedupe=mode, threshold=ds.near_dup_threshold)  # type: ignore[arg-type]
    save_splits(res.records, out_dir, codec=_codec(codec), overwrite=overwrite)  # type: ignore[arg-type]
    classes = sorted({c for per in res.counts.values() for c in per})
    rows = [
        (c, *(f"{res.counts[s][c]} / {res.targets[s][c]}" for s in ("train", "validation", "test")))
        for c in classes
    ]
    out.print(_counts_table("Split (got / target)", ("class", "train", "validation", "test"), rows))
    out.print(f"{res.groups_kept_together} duplicate groups kept on one side → {out_dir}")


@data_app.command("card")
def card_cmd(
    path: Folder,
    name: Annotated[str | None, typer.Option(help="Dataset name in the card.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write (default: the dataset folder)."),
    ] = None,
) -> None:
    """Write README.md (dataset card) and card.json for a dataset folder."""
    from apidistill.data.card import build_card
    from apidistill.data.store import load_records

    card = build_card(load_records(path), name=name or path.resolve().name)
    md, js = card.write(out_dir or path)
    out.print(f"wrote {md} and {js}")
