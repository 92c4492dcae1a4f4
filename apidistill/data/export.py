"""Hand a dataset to the Hugging Face ecosystem: a ``datasets.Dataset``, a local copy, a hub repo.

The store's compact columns are for apidistill; other tools need plain columns, so the export
decodes logprobs into lists (token ids, token text, float32 logprobs, top-k lists) next to the
text fields. Nothing here touches the network except :func:`push_to_hub`, which runs only when
the user asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from apidistill.data.shards import record_to_row
from apidistill.data.store import SPLITS, dataset_status, iter_records
from apidistill.errors import DataError
from apidistill.records import Record

if TYPE_CHECKING:
    import datasets

__all__ = ["HF_SCHEMA", "export_local", "push_to_hub", "to_hf_dataset", "to_hf_dataset_dict"]

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
HF_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(_MESSAGE)),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("label", pa.string()),
        ("gold", pa.string()),
        ("split", pa.string()),
        ("metadata", pa.string()),  # JSON
        ("provenance", pa.string()),  # JSON
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached_input_tokens", pa.int64()),
        ("cost_usd", pa.string()),  # exact decimal as text
        ("token_ids", pa.list_(pa.int64())),  # −1 where the teacher's vocabulary is unknown
        ("tokens", pa.list_(pa.string())),
        ("token_logprobs", pa.list_(pa.float32())),
        ("top_token_ids", pa.list_(pa.list_(pa.int64()))),
        ("top_tokens", pa.list_(pa.list_(pa.string()))),
        ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
    ]
)


def _hf_row(rec: Record) -> dict[str, Any]:
    row = record_to_row(rec)
    row["messages"] = [m.model_dump() for m in rec.messages] if rec.messages else None
    lps = rec.logprobs
    if lps is None:
        return row | dict.fromkeys(
            ("token_ids", "tokens", "token_logprobs", "top_token_ids", "top_tokens", "top_logprobs")
        )
    return row | {
        "token_ids": [-1 if p.token_id is None else p.token_id for p in lps],
        "tokens": [p.token for p in lps],
        "token_logprobs": [p.logprob for p in lps],
        "top_token_ids": [[-1 if t.token_id is None else t.token_id for t in p.top] for p in lps],
        "top_tokens": [[t.token for t in p.top] for p in lps],
        "top_logprobs": [[t.logprob for t in p.top] for p in lps],
    }


def to_hf_dataset(folder: str | Path, split: str | None = None) -> datasets.Dataset:
    """The records (one split or all) as an in-memory ``datasets.Dataset`` with plain columns."""
    import datasets
    from datasets.table import InMemoryTable

    rows = [_hf_row(r) for r in iter_records(folder, split)]
    table = pa.Table.from_pylist(rows, schema=HF_SCHEMA)
    return datasets.Dataset(InMemoryTable(table), split=split)


def to_hf_dataset_dict(folder: str | Path) -> datasets.DatasetDict:
    """One ``Dataset`` per split present (``train``/``validation``/``test``); a dataset that
    was never split becomes a single ``train`` split."""
    import datasets

    splits = dataset_status(folder).splits
    present = [s for s in SPLITS if splits.get(s)]
    if not present:
        return datasets.DatasetDict({"train": to_hf_dataset(folder)})
    if splits.get("unsplit"):
        raise DataError(
            "dataset mixes split and unsplit records",
            file=str(folder),
            hint="run `apidistill data split` to assign every record a split",
        )
    return datasets.DatasetDict({s: to_hf_dataset(folder, s) for s in present})


def export_local(folder: str | Path, out: str | Path) -> Path:
    """Save as a ``datasets`` folder (``load_from_disk``), with the dataset card if present."""
    out = Path(out)
    to_hf_dataset_dict(folder).save_to_disk(str(out))
    card = Path(folder) / "README.md"
    if card.is_file():
        (out / "README.md").write_text(card.read_text(encoding="utf-8"), encoding="utf-8")
    return out


def push_to_hub(
    folder: str | Path, repo: str, *, private: bool = True, token: str | None = None
) -> str:
    """Upload to a Hugging Face hub dataset repo (private by default) with the card as its
    README. Runs only when called: nothing else in apidistill reaches the hub."""
    dd = to_hf_dataset_dict(folder)
    try:
        info = dd.push_to_hub(repo, private=private, token=token)
        card = Path(folder) / "README.md"
        if card.is_file():
            from huggingface_hub import HfApi

            HfApi(token=token).upload_file(
                path_or_fileobj=str(card),
                path_in_repo="README.md",
                repo_id=repo,
                repo_type="dataset",
            )
    except Exception as exc:  # hub client errors have many types; all mean "not uploaded"
        raise DataError(
            f"push to the hub repo {repo!r} failed ({type(exc).__name__}: {str(exc)[:200]})",
            hint="check the repo name, your HF token (HF_TOKEN) and network access",
        ) from exc
    return str(getattr(info, "commit_url", repo))
