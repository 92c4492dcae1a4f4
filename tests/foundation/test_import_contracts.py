"""The layer picture of docs/architecture.md holds: import-linter checks it on every test run.

`lint-imports` reads the contracts in pyproject.toml (``[tool.importlinter]``); .ci/run runs it
too. The second test proves the check bites: a copy of the package with one import that
crosses a layer (costs reaching the harvest engine) must fail it, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in cfg["tool"]["importlinter"]["contracts"]}


def test_the_contracts_say_what_the_architecture_says():
    c = _contracts()
    layers = [layer.replace(" ", "") for layer in c["layers"]["layers"]]
    order = {name: i for i, layer in enumerate(layers) for name in layer.split("|")}
    # top to bottom: CLI, SDK, the one orchestrator, the stages in data-flow order, types
    assert order["cli"] < order["sdk"] < order["pipeline"] < order["train"] < order["data"]
    assert order["data"] < order["harvest"] < order["teachers"] < order["costs"]
    assert order["eval"] == order["serve"] < order["train"]  # siblings that may not mix
    forbidden = set(c["train-offline"]["forbidden_modules"])
    assert {"apidistill.teachers", "apidistill.harvest", "httpx2", "openai", "anthropic"} <= (
        forbidden
    )
    assert c["losses-pure"]["forbidden_modules"] == ["apidistill"]
    assert {"apidistill.harvest", "apidistill.teachers", "openai", "anthropic"} <= set(
        c["policy-costs-pure"]["forbidden_modules"]
    )


@pytest.mark.skipif(not LINT.exists(), reason="import-linter (dev extra) is not installed")
def test_the_package_keeps_every_contract():
    res = _lint(ROOT, ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(not LINT.exists(), reason="import-linter (dev extra) is not installed")
def test_an_import_across_a_layer_fails_the_check(tmp_path: Path):
    shutil.copytree(ROOT / "apidistill", tmp_path / "apidistill",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "apidistill" / "costs" / "sneaky.py"
    bad.write_text("from apidistill.harvest import engine  # costs must not know the engine\n")
    res = _lint(tmp_path, tmp_path)
    assert res.returncode != 0
    assert "apidistill.costs.sneaky -> apidistill.harvest.engine" in res.stdout


MOVED = {  # moved in session 6 (#21); the old names are gone, not aliased
    "apidistill.models": "apidistill.model_loading",
    "apidistill.pipeline.requests": "apidistill.pipeline.teacher_requests",
    "apidistill.data.schema": "apidistill.records",
    "apidistill.harvest.journal": "apidistill.storage.journal",
}


def test_moved_modules_are_gone_and_nothing_imports_their_old_names():
    import ast

    for old in MOVED:
        path = ROOT.joinpath(*old.split("."))
        assert not path.with_suffix(".py").exists(), f"{old} should be gone ({MOVED[old]})"
    found = []
    for top in ("apidistill", "tests", "benchmarks", "examples"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n in MOVED
                ]
    assert not found, f"import the new names ({MOVED}): {found}"
