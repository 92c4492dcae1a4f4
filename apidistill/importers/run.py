"""One import from a source description to a dataset folder, shared by ``apidistill import``
and the run file's ``prompts.imports``.

:func:`load_source` reads one :class:`~apidistill.config.ImportConfig` (a remote source
through the official ``openai`` SDK); :func:`decide_imports` gets the terms decision of every
model that wrote answers and enforces it like the harvest does (a denied use stops here,
before anything is written); :func:`write_import` writes the records in the harvest's dataset
format with an ``import.json`` that says what was read, skipped and failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apidistill.config import ImportConfig, PolicyConfig
from apidistill.errors import ConfigError, redact
from apidistill.importers.base import ImportLoad, unique_records
from apidistill.records import Record

__all__ = ["ImportResult", "decide_imports", "import_records", "load_source", "write_import"]

IMPORT_FILE = "import.json"


def openai_client(src: ImportConfig) -> Any:
    """The official SDK client for a remote source; the key is read from ``api_key_env``."""
    from openai import OpenAI

    from apidistill.errors import register_secret

    key = os.environ.get(src.api_key_env)
    if not key:
        raise ConfigError(
            f"no API key in ${src.api_key_env}",
            key="api_key_env",
            hint=f"export {src.api_key_env}=… (the key is read from the environment, never stored)",
        )
    register_secret(key)
    return OpenAI(api_key=key, base_url=src.base_url or os.environ.get("OPENAI_BASE_URL"))


def load_source(
    src: ImportConfig,
    *,
    resolve: Callable[[str], Path] = Path,
    cache_dir: Path | None = None,
    client: Any = None,
) -> ImportLoad:
    """Read one source. ``resolve`` turns the file names of ``src`` into paths (relative to
    the run file); ``cache_dir`` keeps files downloaded through the Files API."""
    from apidistill.importers import batch_output, captures, generic, openai_finetune, openai_stored

    kw: dict[str, Any] = {"skip_invalid": src.skip_invalid, "limit": src.limit}
    if src.kind == "openai_stored":
        return openai_stored.import_stored_completions(
            client or openai_client(src),
            model=src.model,
            metadata=src.metadata or None,
            after=src.after,
            **kw,
        )
    assert src.path is not None  # ImportConfig checks it
    if src.kind == "openai_finetune":
        if openai_finetune.is_file_id(src.path):
            path = openai_finetune.fetch_openai_file(
                client or openai_client(src), src.path, cache_dir or Path(".")
            )
            ref = src.path
        else:
            path, ref = resolve(src.path), None
        return openai_finetune.import_finetune_file(
            path, model=src.model or "", provider=src.provider or "openai", ref=ref, **kw
        )
    path = resolve(src.path)
    if src.kind == "openai_batch":
        return batch_output.import_openai_batch(path, requests=resolve(src.requests or ""), **kw)
    if src.kind == "anthropic_batch":
        return batch_output.import_anthropic_batch(path, requests=resolve(src.requests or ""), **kw)
    if src.kind == "captures":
        return captures.import_captures(path, **kw)
    return generic.import_generic_chat(
        path, provider=src.provider or "", model=src.model or "", **kw
    )


def decide_imports(loads: Sequence[ImportLoad], policy: PolicyConfig) -> dict[tuple[str, str], Any]:
    """The enforced terms decision of every (provider, model) whose answers were read:
    raises :class:`~apidistill.errors.PolicyDenied` exactly as the harvest would."""
    from apidistill.policy.engine import decide, enforce

    dirs = [Path(d).expanduser() for d in policy.policy_dirs]
    out: dict[tuple[str, str], Any] = {}
    for load in loads:
        for ex in load.items:
            key = (ex.provider, ex.model)
            if key not in out:
                out[key] = enforce(
                    decide(ex.provider, ex.model, policy.use, extra_dirs=dirs), policy
                )
    return out


@dataclass
class ImportResult:
    records: list[Record]
    skipped: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    decisions: dict[tuple[str, str], Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        with_lp = sum(1 for r in self.records if r.logprobs)
        return {
            "records": len(self.records),
            "with_logprobs": with_lp,
            "skipped_invalid": self.skipped,
            "failed_requests": self.failed,
            "problems": self.problems[:100],
            "decisions": [d.model_dump(mode="json") for d in self.decisions.values()],
        }


def import_records(loads: Sequence[ImportLoad], policy: PolicyConfig) -> ImportResult:
    """Decide the terms, then turn every exchange into a record (unique ids)."""
    decisions = decide_imports(loads, policy)
    items = [ex for load in loads for ex in load.items]
    return ImportResult(
        records=list(unique_records(items, decisions)),
        skipped=sum(x.skipped for x in loads),
        failed=sum(x.failed for x in loads),
        problems=[p for x in loads for p in x.problems],
        decisions=decisions,
    )


def write_import(result: ImportResult, folder: Path, *, overwrite: bool = False) -> Path:
    """Write the records as a dataset folder (the harvest's format), its data card (whose
    ``policy`` list keeps the decisions the records cite, so ``apidistill data`` commands and
    training resolve their terms) and ``import.json`` (what was read, skipped and failed)."""
    from apidistill.data.card import build_card
    from apidistill.data.store import save_records
    from apidistill.policy.obligations import render_obligations_md

    save_records(result.records, folder, overwrite=overwrite)
    decisions = list(result.decisions.values())
    build_card(
        result.records,
        name=f"import of {', '.join(sorted({r.metadata['import']['source'] for r in result.records})) or 'nothing'}",
        teachers=[{"provider": p, "model": m} for p, m in result.decisions],
        policy=[d.model_dump(mode="json") for d in decisions],
        policy_markdown=render_obligations_md(decisions) if decisions else None,
    ).write(folder)
    text = redact(json.dumps(result.summary(), indent=2, default=str, ensure_ascii=False))
    (folder / IMPORT_FILE).write_text(text, encoding="utf-8")
    return folder
