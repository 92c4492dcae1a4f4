"""The user docs must keep up with the code: every run-file key is documented."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from apidistill import config as C

ROOT = Path(__file__).resolve().parents[2]


def _sections() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(C).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == C.__name__
    ]


def test_every_config_key_is_in_the_reference():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    missing = [
        f"{cls.__name__}.{name}"
        for cls in _sections()
        for name, f in cls.model_fields.items()
        if not f.exclude and f"| `{name}` |" not in text
    ]
    assert not missing, f"docs/config.md lacks {missing}; regenerate it"


def test_readme_commands_are_in_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = next(
        line for line in readme.splitlines() if "pytest" in line and "pip install" in line
    )
    assert test_cmd.strip() in ci
