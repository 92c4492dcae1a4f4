"""One orchestrator (issue 21 item 1): ``apidistill run``, ``apidistill harvest`` and
``Distiller`` run policy → estimate → teacher server → harvest through the same stage function
(:func:`apidistill.pipeline.teacher_stages.run_teacher_stages`), and no pipeline code changes
the run's config to pass a decision on (decisions are files in the run folder).

The estimate needs no teacher, so neither ``Distiller.estimate()`` nor ``run --stop-after
estimate`` may start the self-hosted teacher server any more (both did: each wrote its own
copy of the sequence).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from apidistill.config import RunConfig, load_config
from apidistill.pipeline.run import run_pipeline
from apidistill.sdk import Distiller

PKG = Path(__file__).resolve().parents[2] / "apidistill"


def _served_teacher_run(folder: Path) -> RunConfig:
    rows = [{"id": f"t{i}", "text": f"ticket {i}: order {1000 + i} is late"} for i in range(3)]
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    data = {
        "name": "orchestrator",
        "run_dir": str(folder / "run"),
        "teacher": {
            "provider": "openai_compatible",
            "profile": "apidistill",
            "model": "smollm2-135m-instruct",
            "launch": {"model": "smollm2-135m-instruct"},
            "price": {"input_per_mtok": 0, "output_per_mtok": 0},
        },
        "prompts": {"path": "prompts.jsonl", "id_field": "id"},
        "policy": {"use": "internal"},
        "budget": {"usd": 1},
        "harvest": {"max_tokens": 8},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_config(path)


@pytest.fixture
def no_teacher_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import apidistill.serve.launcher as launcher

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher server was started")

    monkeypatch.setattr(launcher, "launch_server", refuse)


def test_distiller_estimate_starts_no_teacher_server(tmp_path, no_teacher_server) -> None:
    cfg = _served_teacher_run(tmp_path)
    est = Distiller(cfg, progress=False).estimate()
    assert est.requests == 3
    assert (Path(cfg.run_dir) / "estimate.json").is_file()


def test_run_stopped_after_the_estimate_starts_no_teacher_server(
    tmp_path, no_teacher_server
) -> None:
    cfg = _served_teacher_run(tmp_path)
    run_pipeline(cfg, progress=False, stop_after="estimate")
    run = Path(cfg.run_dir)
    assert (run / "policy.json").is_file() and (run / "estimate.json").is_file()
    assert not (run / "harvest").exists()


def _calls(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
    return names


def _function(path: Path, qualname: str) -> ast.AST:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    *owner, name = qualname.split(".")
    scope: ast.AST = tree
    for part in owner:
        scope = next(n for n in ast.walk(scope) if isinstance(n, ast.ClassDef) and n.name == part)
    return next(n for n in ast.walk(scope) if isinstance(n, ast.FunctionDef) and n.name == name)


@pytest.mark.parametrize(
    ("module", "function"),
    [
        ("cli/harvest.py", "harvest"),
        ("sdk.py", "Distiller.harvest"),
        ("pipeline/run.py", "_teacher_stages"),
    ],
)
def test_every_front_end_harvests_through_the_one_stage_function(module, function) -> None:
    calls = _calls(_function(PKG / module, function))
    assert "run_teacher_stages" in calls
    # the sequence itself is written once, in pipeline/teacher_stages.py
    assert not calls & {"policy_stage", "harvest_stage", "teacher_server", "estimate_stage"}


def test_only_the_teacher_stages_call_the_harvest_stage() -> None:
    callers = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "harvest_stage" in _calls(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert callers == ["pipeline/teacher_stages.py"]


def _config_roots(target: ast.expr) -> str | None:
    """``cfg`` / ``ctx.cfg`` / ``self.config`` when ``target`` assigns into one of them."""
    node = target
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not chain or not isinstance(node, ast.Name):
        return None
    root = [node.id, *reversed(chain)]
    for prefix in (["cfg"], ["ctx", "cfg"], ["self", "config"], ["self", "ctx", "cfg"]):
        if root[: len(prefix)] == prefix and len(root) > len(prefix):
            return ".".join(root)
    return None


def test_no_pipeline_stage_passes_a_decision_on_by_changing_the_config() -> None:
    found = []
    for path in [*(PKG / "pipeline").glob("*.py"), PKG / "sdk.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )
            for t in targets:
                if hit := _config_roots(t):
                    found.append(f"{path.name}:{node.lineno} {hit}")
    assert not found, f"write the decision into the run folder instead: {found}"
