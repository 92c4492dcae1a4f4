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


def test_every_config_field_has_a_description():
    from apidistill.docs_config import undocumented_fields

    assert undocumented_fields() == []


def test_every_policy_file_and_decision_field_has_a_description():
    """The policy file format (users write their own agreements) and the Decision the SDK
    returns are public: each field says what it means."""
    from apidistill.policy import schema

    missing = [
        f"{cls.__name__}.{name}"
        for cls in (schema.Obligations, schema.Rule, schema.Policy, schema.Decision)
        for name, f in cls.model_fields.items()
        if not (f.description or "").strip()
    ]
    assert missing == []


def test_a_field_without_a_description_is_caught(monkeypatch):
    from apidistill.docs_config import main, undocumented_fields

    field = C.HarvestConfig.model_fields["rpm"]
    monkeypatch.setattr(field, "description", None)
    assert undocumented_fields() == ["HarvestConfig.rpm"]
    assert main(["--check"]) == 1


def test_config_reference_is_generated_from_the_models():
    """docs/config.md is exactly what `python -m apidistill.docs_config` writes: a key, type,
    default or description changed in apidistill/config/ without regenerating fails here."""
    from apidistill.docs_config import render

    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == render(), "docs/config.md is stale: run python -m apidistill.docs_config"


def test_the_generator_check_mode_reports_a_stale_file(tmp_path):
    from apidistill.docs_config import main, render

    stale = tmp_path / "config.md"
    stale.write_text(render().replace("Requests in flight at once.", "old text"), "utf-8")
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", "--output", str(stale)]) == 0


def test_readme_commands_are_in_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = next(
        line for line in readme.splitlines() if "pytest" in line and "pip install" in line
    )
    assert test_cmd.strip() in ci
