"""The public surface: what ``apidistill`` exports is enough for SDK and async-script users."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import apidistill

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "async_batch_harvest.py"


def test_every_name_in_all_resolves():
    missing = [n for n in apidistill.__all__ if not hasattr(apidistill, n)]
    assert not missing
    assert len(set(apidistill.__all__)) == len(apidistill.__all__)
    assert set(dir(apidistill)) >= set(apidistill.__all__)


def test_the_async_batch_example_imports_only_from_apidistill():
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    ours = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "apidistill":
                ours.append(node.module)
        elif isinstance(node, ast.Import):
            ours += [a.name for a in node.names if a.name.split(".")[0] == "apidistill"]
    assert ours == ["apidistill"]  # one import, of the package itself, no internal module


def test_the_example_passes_the_policy_config_once():
    """The terms check happens inside harvest(policy=...): one PolicyConfig, no hand-made
    decide/enforce pair that could drift from what the harvest uses."""
    text = EXAMPLE.read_text(encoding="utf-8")
    tree = ast.parse(text)
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "PolicyConfig"
    ]
    assert len(calls) == 1
    assert "decide_for_teacher" not in text and "enforce" not in text


def test_harvest_is_the_function_even_after_its_subpackage_is_imported():
    import apidistill.harvest.engine  # noqa: F401  (loads more of the subpackage)
    from apidistill import harvest

    assert callable(harvest) and harvest.__module__ == "apidistill.harvest.api"


def test_importing_apidistill_loads_no_provider_sdk_or_torch():
    code = (
        "import sys, apidistill\n"
        "heavy = [m for m in ('openai', 'anthropic', 'torch', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_docstring_says_only_all_is_public():
    assert "Only the names in" in (apidistill.__doc__ or "")


def test_distiller_methods_return_typed_results():
    import apidistill.sdk

    names = {**vars(apidistill.sdk), **{n: getattr(apidistill, n) for n in apidistill.__all__}}
    hints = {
        name: typing.get_type_hints(getattr(apidistill.Distiller, name), names)["return"]
        for name in ("check_policy", "estimate", "harvest", "build_dataset", "train", "evaluate")
    }
    assert hints == {
        "check_policy": apidistill.Decision,
        "estimate": apidistill.Estimate,
        "harvest": apidistill.HarvestOutcome,
        "build_dataset": apidistill.DatasetResult,
        "train": apidistill.TrainResult,
        "evaluate": apidistill.EvalResult,
    }
