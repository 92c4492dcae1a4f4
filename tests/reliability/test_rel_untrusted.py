"""Untrusted files: nothing apidistill reads can run code or steer a write outside its folder.

- The package source has no pickle loads, every ``torch.load`` says ``weights_only=True``,
  YAML goes through ``safe_load`` only, no ``trust_remote_code=True``, no ``eval``/``exec``,
  no ``shell=True``.
- Run names that could climb out of the runs folder are refused by the config; every path a
  run writes is inside its run folder.
- A dataset folder from elsewhere (a crafted ``manifest.json``) cannot make apidistill read,
  write or delete a file outside that folder.
- Model weights load from safetensors only: every ``from_pretrained`` of weights in the
  package says ``use_safetensors=True`` (or loads a GGUF file, which is not pickle), and a
  model or adapter folder whose weights are pickle files is refused by name, unread.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
from rel_helpers import REPO, run_cli, save_tiny_llama

from apidistill.config import parse_config
from apidistill.data.store import load_records, save_records
from apidistill.errors import ConfigError, DataError, ModelLoadError
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
    # the scanner really parses calls (YAML is read by apidistill.yamlfile, which composes
    # with a SafeLoader and constructs with a SafeLoader subclass that refuses repeated keys)
    assert len(CALLS) > 1000 and "yaml.compose" in names


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
    from apidistill.records import Message, Record

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


def test_crafted_manifest_cannot_reach_outside(tmp_path: Path) -> None:
    folder, victim = _dataset_with_manifest(tmp_path, shard_file="../victim.txt")
    with pytest.raises(DataError) as err:
        load_records(folder)
    assert "manifest" in str(err.value)
    with pytest.raises(DataError):
        save_records([], folder, overwrite=True)
    assert victim.read_text() == "must survive"


@pytest.mark.parametrize("name", ["../../victim.txt", "/etc/hostname-not-really"])
def test_an_old_manifests_write_ahead_names_are_never_opened(tmp_path: Path, name: str) -> None:
    """Manifests of the write-ahead era list compacted files (``compacted_wal``); the store
    keeps no write-ahead files now, so those names are ignored: never opened, never deleted."""
    folder, victim = _dataset_with_manifest(tmp_path, compacted_wal=[name])
    assert [r.id for r in load_records(folder)] == ["r0", "r1", "r2"]
    save_records([], folder, overwrite=True)
    assert victim.read_text() == "must survive"


# --------------------------------------------------------------------------- model weights

# Classes whose from_pretrained reads no weights (tokenizer files, JSON configs).
_NO_WEIGHTS = ("Tokenizer", "Config", "Processor", "FeatureExtractor")
_ADAPTER_GUARD = "require_safetensors_adapter"


def _enclosing_function(tree: ast.Module, node: ast.AST) -> ast.AST | None:
    around = [
        fn
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and fn.lineno <= node.lineno <= (fn.end_lineno or fn.lineno)
    ]
    return max(around, key=lambda fn: fn.lineno, default=None)  # the innermost


def _weight_load_verdict(path: Path, node: ast.Call, func: str) -> str | None:
    """Why a ``*.from_pretrained(...)`` call is safe, or None when it is not shown to be."""
    owner = func.rsplit(".", 1)[0]
    if any(word in owner for word in _NO_WEIGHTS):
        return "no weights"
    gguf = _kw(node, "gguf_file")
    if gguf is not None and not (isinstance(gguf, ast.Constant) and gguf.value is None):
        return "gguf"
    flag = _kw(node, "use_safetensors")
    if isinstance(flag, ast.Constant) and flag.value is True:
        return "safetensors"
    if owner.endswith("PeftModel"):  # peft has no use_safetensors: the caller checks first
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fn = _enclosing_function(tree, node)
        guarded = fn is not None and any(
            isinstance(c, ast.Call)
            and ast.unparse(c.func).split(".")[-1] == _ADAPTER_GUARD
            and c.lineno < node.lineno
            for c in ast.walk(fn)
        )
        return "adapter checked" if guarded else None
    return None


def test_every_weight_load_is_safetensors_only() -> None:
    loads = [(p, n, f) for p, n, f in CALLS if f.split(".")[-1] == "from_pretrained"]
    verdicts = {_where(p, n): _weight_load_verdict(p, n, f) for p, n, f in loads}
    assert [w for w, v in verdicts.items() if v is None] == []
    # the scan really sees the model loads of apidistill.model_loading (not a vacuous pass)
    seen = {v for w, v in verdicts.items() if w.startswith("apidistill/model_loading.py")}
    assert {"safetensors", "gguf", "no weights", "adapter checked"} <= seen, verdicts
    # `load = AutoModel.from_pretrained; load(...)` would dodge the call check
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "from_pretrained":
                line = f"{path.relative_to(REPO)}:{node.lineno}"
                assert line in verdicts, f"{line}: from_pretrained used but not called"


def _pickle_only_model(folder: Path) -> Path:
    """A tiny random-init Llama whose weights are ``pytorch_model.bin`` only: what
    ``save_pretrained(safe_serialization=False)`` wrote before transformers 5 dropped it."""
    import torch
    from safetensors.torch import load_file

    save_tiny_llama(folder, hidden=16, layers=1)
    safe = folder / "model.safetensors"
    torch.save(load_file(safe), folder / "pytorch_model.bin")
    safe.unlink()
    return folder


def test_pickle_only_model_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    import torch

    from apidistill.model_loading import load_model

    good = save_tiny_llama(tmp_path / "safe", hidden=16, layers=1)
    assert load_model(str(good)) is not None  # the same model as safetensors loads
    folder = _pickle_only_model(tmp_path / "bin_only")

    def unpickled(*args, **kwargs):
        raise AssertionError(f"torch.load called on an untrusted file: {args[:1]}")

    monkeypatch.setattr(torch, "load", unpickled)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder))
    msg = err.value.message
    assert "\n" not in msg, msg
    assert str(folder) in msg and "pytorch_model.bin" in msg, msg
    assert "convert" in msg and "safetensors" in msg, msg
    monkeypatch.undo()

    # through the CLI: exit 2, the message, no traceback, nothing served
    try:
        done = run_cli("serve", "--model", str(folder), "--port", "0", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("apidistill serve started on a folder of pickle weights")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and str(folder) in first and "safetensors" in first
    assert "ready on" not in done.stdout


def test_pickle_only_adapter_is_refused(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from apidistill.model_loading import load_model, peft_quiet

    base = save_tiny_llama(tmp_path / "base", hidden=16, layers=1)
    good, bad = tmp_path / "adapter_safe", tmp_path / "adapter_bin"
    with peft_quiet():
        lora = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base, use_safetensors=True),
            LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        )
        lora.save_pretrained(good)
        lora.save_pretrained(bad, safe_serialization=False)
    assert (bad / "adapter_model.bin").is_file()
    assert not (bad / "adapter_model.safetensors").exists()
    assert load_model(str(base), adapter=str(good)) is not None
    with pytest.raises(ModelLoadError) as err:
        load_model(str(base), adapter=str(bad))
    msg = err.value.message
    assert str(bad) in msg and "adapter_model.bin" in msg and "safetensors" in msg, msg
