"""A scaled-down run file against a loopback teacher (the fault server), shared by the
pipeline and SDK tests that run real stages over a few ticket prompts.

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so tests import it as
``from loopback_run_file import loopback_run_file``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["loopback_run_file"]


def loopback_run_file(
    folder: Path, base_url: str, *, name: str, rows: int = 10, **sections: dict[str, Any]
) -> Path:
    """Write ``rows`` ticket prompts and a run file named ``name`` into ``folder``.

    The teacher is an OpenAI-compatible server at ``base_url`` with a fixed price, so spend
    is known; each keyword (``harvest={...}``, ``teacher={...}``, ...) is merged over that
    section's defaults. Returns the run file's path.
    """
    prompts = [
        {"id": f"t{i:02d}", "text": f"ticket {i}: order {1000 + i} is late"} for i in range(rows)
    ]
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in prompts), encoding="utf-8"
    )
    data: dict[str, Any] = {
        "name": name,
        "run_dir": str(folder / "run"),
        "teacher": {
            "provider": "openai_compatible",
            "model": "fault-model",
            "base_url": base_url,
            "price": {"input_per_mtok": 1, "output_per_mtok": 2},
        },
        "prompts": {"path": "prompts.jsonl", "id_field": "id"},
        "policy": {"use": "internal", "acknowledge_unknown": f"{name} test: loopback fake"},
        "budget": {"usd": 10},
        "harvest": {"concurrency": 4, "max_tokens": 8, "timeout_s": 10, "max_retries": 1},
        "dataset": {"splits": {"train": 0.7, "validation": 0.0, "test": 0.3, "stratify_by": None}},
    }
    for key, section in sections.items():
        data[key] = {**data.get(key, {}), **section}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
