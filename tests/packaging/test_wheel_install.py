"""A built wheel, installed like any package, runs ``policy``, ``run``, ``serve`` and ``demo``.

Before, an installed wheel answered "policy folder not found" and "demo config not found":
both were read relative to a source checkout. Now they ship as package data
(``apidistill/policies``, ``apidistill/demo_data``) and are found with importlib.resources.

The venv: ``python -m venv --without-pip`` (no system site-packages), the wheel installed into
it with ``pip install --no-deps``, and the heavy dependencies (torch, transformers, …) borrowed
from the test's own environment through one ``.pth`` line naming its site-packages folder.
A path line in a ``.pth`` file only extends ``sys.path``; the ``.pth`` files inside that
folder are not executed, so the editable install's finder (``__editable__*.pth``) never loads
and ``import apidistill`` can only find the installed wheel; the test checks that. Every
command runs from a folder outside the repository with ``PYTHONPATH`` removed.

``serve`` answers a chat call on the embedded model; the scaled-down demo from the installed
wheel (minutes of model loading and training) is a step of ``.ci/run`` built the same way,
so CI does not pay for it twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
AGREEMENT = """\
id: acme-openai-enterprise
provider: openai
channel: api
models: ["gpt-4.1-*"]
document: ACME-OpenAI Enterprise Agreement
effective_date: 2026-03-01
checked_on: 2026-11-20
rules:
  commercial: {decision: allow, clause: "§7.2", reason: "distillation permitted for internal products"}
"""


@dataclass
class Installed:
    venv: Path
    wheel: Path
    work: Path  # a folder outside the repository, the commands' working directory

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200")
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``apidistill ARGS`` through the console script pip wrote into the venv."""
        return subprocess.run(
            [str(self.venv / "bin" / "apidistill"), *args],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _run(cmd: list[str], **kw) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"


def build_wheel(out: Path) -> Path:
    """Build from a copy of the package sources, so the checkout gets no build/ folder."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "apidistill",
        src / "apidistill",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = out / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(src), "-w", str(dist)]
    )  # fmt: skip
    (wheel,) = dist.glob("apidistill-*.whl")
    return wheel


def install_wheel(wheel: Path, venv: Path) -> None:
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]  # this interpreter's site-packages
    (Path(purelib) / "_apidistill_test_deps.pth").write_text(deps + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", str(wheel)],
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root / "build")
    install_wheel(wheel, root / "venv")
    work = root / "work"
    work.mkdir()
    return Installed(root / "venv", wheel, work)


def test_the_wheel_carries_the_policies_and_the_demo_data(installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    policies = {n for n in names if n.startswith("apidistill/policies/")}
    assert {Path(n).name for n in policies} >= {"openai.yaml", "anthropic.yaml", "permissive.yaml"}
    for f in ("migrate.yaml", "tickets.jsonl", "prototype_prompt.yaml"):
        assert f"apidistill/demo_data/{f}" in names


def test_the_venv_imports_the_installed_wheel_not_the_checkout(installed) -> None:
    code = "import apidistill, sys, json; print(json.dumps([apidistill.__file__, sys.path]))"
    out = subprocess.run(
        [str(installed.python), "-c", code],
        cwd=installed.work,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    where, path = json.loads(out)
    assert Path(where).is_relative_to(installed.venv), where
    assert str(REPO) not in path and "" not in path[1:]


def test_policy_commands_use_the_packaged_library_and_a_users_folder(installed) -> None:
    ok = installed.cli("policy", "check", "--teacher", "openai", "--model", "gpt-4.1-mini",
                       "--use", "internal")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "allow_with_obligations" in ok.stdout and "site-packages/apidistill/policies" in (
        ok.stdout.replace("\n", "")
    )
    valid = installed.cli("policy", "validate")
    assert valid.returncode == 0 and "ok:" in valid.stdout, valid.stdout + valid.stderr
    denied = installed.cli("policy", "check", "--teacher", "openai", "--model", "gpt-4.1-mini",
                           "--use", "commercial")  # fmt: skip
    assert denied.returncode == 1, denied.stdout + denied.stderr
    agreements = installed.work / "agreements"
    agreements.mkdir()
    (agreements / "openai.yaml").write_text(AGREEMENT, encoding="utf-8")
    mine = installed.cli("policy", "check", "--teacher", "openai", "--model", "gpt-4.1-mini",
                         "--use", "commercial", "--policy-dir", "agreements")  # fmt: skip
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "acme-openai-enterprise" in mine.stdout


def test_run_reaches_the_estimate_with_an_api_teacher(installed) -> None:
    """Policy (packaged library) and estimate (packaged prices and tokenizer) of a user's run
    file outside the repository; the estimate sends nothing, so no key or network."""
    (installed.work / "tickets.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "text": f"order {i} is late"}) + "\n" for i in range(5)),
        encoding="utf-8",
    )
    (installed.work / "run.yaml").write_text(
        "name: wheel\n"
        "teacher: {provider: openai, model: gpt-4.1-mini}\n"
        "prompts: {path: tickets.jsonl, id_field: id}\n"
        "policy: {use: internal}\n"
        "budget: {usd: 1}\n"
        "harvest: {max_tokens: 16}\n",
        encoding="utf-8",
    )
    done = installed.cli("run", "run.yaml", "--stop-after", "estimate", "--no-progress")
    out = done.stdout + done.stderr  # the stage lines go to stderr (progress console)
    assert done.returncode == 0, out
    assert "policy: allow_with_obligations" in out and "5 (5 prompts)" in out
    assert (installed.work / "runs" / "wheel" / "estimate.json").is_file()


def test_help_of_serve_and_demo(installed) -> None:
    for cmd in ("serve", "demo"):
        done = installed.cli(cmd, "--help")
        assert done.returncode == 0, done.stderr
    assert "--config" in installed.cli("serve", "--help").stdout


def test_serve_answers_from_the_wheel(installed) -> None:
    """``apidistill serve`` of the installed package on the embedded model: one chat call."""
    import httpx2

    proc = subprocess.Popen(
        [str(installed.venv / "bin" / "apidistill"), "serve", "--port", "0", "--max-batch-size",
         "1", "--threads", "1"],
        cwd=installed.work, env=installed.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line, printed once the port accepts
        assert line.startswith("apidistill serve: ready on "), line + proc.stderr.read()
        base = line.split("ready on ", 1)[1].strip()
        resp = httpx2.post(
            base + "/chat/completions",
            json={"model": "smollm2-135m-instruct", "max_tokens": 4,
                  "messages": [{"role": "user", "content": "Say hi."}]},
            timeout=120,
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(30)
