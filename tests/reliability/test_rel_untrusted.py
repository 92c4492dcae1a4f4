"""Untrusted files: nothing apidistill reads can run code or steer a write outside its folder.

- The package source has no pickle loads, every ``torch.load`` says ``weights_only=True``,
  YAML goes through ``safe_load`` only, no ``trust_remote_code=True``, no ``eval``/``exec``,
  no ``shell=True``.
- Run names that could climb out of the runs folder are refused by the config; every path a
  run writes is inside its run folder.
- A dataset folder from elsewhere (a crafted ``manifest.json``) cannot make apidistill read,
  write or delete a file outside that folder.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from rel_helpers import REPO

from apidistill.config import parse_config
from apidistill.data.store import DatasetWriter, load_records, save_records
from apidistill.errors import ConfigError, DataError
from apidistill.pipeline.layout import RunLayout

PACKAGE = REPO / "apidistill"


def _calls() -> list[tuple[Path, ast.Call, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                out.append((path, node, ast.unparse(node.func)))
    return out


CALLS = _calls()


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_the_scan_sees_the_package() -> None:
    names = {f for _, _, f in CALLS}
    assert len(CALLS) > 1000 and "yaml.safe_load" in names  # the scanner really parses calls


def test_no_pickle_loads() -> None:
    bad = [
        _where(p, n)
        for p, n, f in CALLS
        if f.split(".")[-1] in ("load", "loads", "Unpickler")
        and f.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "_pickle")
    ]
    bad += [
        _where(p, n)
        for p, n, f in CALLS
        if f in ("np.load", "numpy.load")
        and isinstance(_kw(n, "allow_pickle"), ast.Constant)
        and _kw(n, "allow_pickle").value is True  # type: ignore[union-attr]
    ]
    assert bad == []


def test_every_torch_load_is_weights_only() -> None:
    bad = []
    for p, n, f in CALLS:
        if f == "torch.load" or f.endswith(".torch.load"):
            flag = _kw(n, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                bad.append(_where(p, n))
    for path in PACKAGE.rglob("*.py"):  # `from torch import load` would dodge the check
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module in ("torch", "torch.serialization")
                and any(a.name == "load" for a in node.names)
            ):
                bad.append(_where(path, node))
    assert bad == []


def test_yaml_is_only_safe_loaded() -> None:
    unsafe = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.Loader"}
    bad = [_where(p, n) for p, n, f in CALLS if f in unsafe]
    for p, n, f in CALLS:  # yaml.compose/parse must name a SafeLoader (or an alias of one)
        if f in ("yaml.compose", "yaml.compose_all", "yaml.parse"):
            loader = _kw(n, "Loader")
            text = ast.unparse(loader) if loader is not None else ""
            if isinstance(loader, ast.Name):
                text = _module_assignment(p, loader.id)
            if "SafeLoader" not in text:
                bad.append(_where(p, n))
    assert bad == []


def _module_assignment(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.unparse(node.value)
    return ""


def test_no_remote_code_eval_exec_or_shell() -> None:
    bad = []
    for p, n, f in CALLS:
        trc = _kw(n, "trust_remote_code")
        if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
            bad.append(f"{_where(p, n)} trust_remote_code")
        shell = _kw(n, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            bad.append(f"{_where(p, n)} shell=")
        if f in ("eval", "exec", "builtins.eval", "builtins.exec"):
            bad.append(f"{_where(p, n)} {f}")
    assert bad == []


# --------------------------------------------------------------------------- run folder

_RUN = """\
name: {name}
run_dir: runs/{{name}}
teacher: {{provider: openai_compatible, model: m, base_url: "http://127.0.0.1:9/v1"}}
prompts: {{path: p.jsonl}}
policy: {{use: internal}}
budget: {{usd: 1}}
"""


@pytest.mark.parametrize(
    "name", ["'..'", "'../up'", "'a/../../b'", "'/abs'", "'a\\\\b'", "'.hidden'", "''"]
)
def test_run_names_that_climb_out_are_refused(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_RUN.format(name=name), file="run.yaml")
    assert err.value.key == "name"


@pytest.mark.parametrize("name", ["demo", "a..b", "run-1_x", "ünïcode", "x y"])
def test_every_run_path_is_inside_the_run_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "run.yaml").write_text(_RUN.format(name=json.dumps(name)), encoding="utf-8")
    cfg = parse_config((tmp_path / "run.yaml").read_text(), file=str(tmp_path / "run.yaml"))
    root = cfg.run_path.resolve()
    assert root.is_relative_to((tmp_path / "runs").resolve())
    layout = RunLayout(cfg.run_path)
    props = [k for k, v in vars(RunLayout).items() if isinstance(v, property)]
    assert len(props) >= 10
    for prop in props:
        path = getattr(layout, prop).resolve()
        assert path.is_relative_to(root) and path != root, (prop, path)


# --------------------------------------------------------------------------- crafted dataset


def _dataset_with_manifest(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    from apidistill.data.schema import Message, Record

    folder = tmp_path / "shared_dataset"
    recs = [
        Record(id=f"r{i}", messages=[Message(role="user", content=f"q{i}")], completion="a")
        for i in range(3)
    ]
    save_records(recs, folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, value in changes.items():
        if key == "shard_file":
            manifest["shards"][0]["file"] = value
        else:
            manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, victim


@pytest.mark.parametrize(
    "changes",
    [
        {"compacted_wal": ["../../victim.txt"]},
        {"compacted_wal": ["/etc/hostname-not-really"]},
        {"shard_file": "../victim.txt"},
    ],
    ids=["wal_escape", "wal_absolute", "shard_escape"],
)
def test_crafted_manifest_cannot_reach_outside(tmp_path: Path, changes: dict) -> None:
    folder, victim = _dataset_with_manifest(tmp_path, **changes)
    with pytest.raises(DataError) as err, DatasetWriter(folder):
        pass
    assert "manifest" in str(err.value)
    with pytest.raises(DataError):
        load_records(folder)
    with pytest.raises(DataError):
        save_records([], folder, overwrite=True)
    assert victim.read_text() == "must survive"
