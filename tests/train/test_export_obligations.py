"""Issue 6 acceptance: a student trained on Llama 3.1 outputs carries the license's obligations
(name prefix, attribution) in its exported model card — read by the export from the dataset's
provenance, never handed to it by the caller.

The dataset is made the way a user makes one: ``run_pipeline`` decides the teacher's terms
(a self-hosted ``meta-llama/Llama-3.1-8B-Instruct`` on a loopback server → the Llama 3.1
Community License), harvests over HTTP, writes the dataset and its card, and trains a tiny
random-init student for one step. The export is then called with no card sections at all.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import apidistill
from apidistill.config import RunConfig
from apidistill.data.store import load_records
from apidistill.errors import DataError
from apidistill.export import export_student
from apidistill.pipeline.run import export_stage, run_pipeline
from apidistill.pipeline.stages import RunContext
from apidistill.testing.fault_server import FaultServerProcess
from apidistill.train.api import TrainResult

TEACHER = "meta-llama/Llama-3.1-8B-Instruct"
# What apidistill/policies/meta.yaml (meta-llama31-weights, rule 'redistribute') makes of it, rendered.
HEADING = (
    "### Obligations under Llama 3.1 Community License Agreement, effective 2024-07-23, "
    f"§1.b.i (teacher {TEACHER}, use redistribute)"
)
NAME_PREFIX = '- The student\'s name must begin with "Llama".'
ATTRIBUTION = '- Display "Built with Llama" where the student is offered or described.'

# A signed agreement covering the same checkpoints, with no obligations at all: user policy
# files win over the built-in library, so only the recorded decision differs between runs.
NO_OBLIGATIONS_POLICY = """\
policies:
  - id: acme-meta-agreement
    provider: meta
    channel: weights
    models: ["llama-3.1-*"]
    document: ACME-Meta Model Agreement
    effective_date: 2026-01-01
    checked_on: 2026-11-24
    rules:
      redistribute: {decision: allow, clause: "§4", reason: "signed agreement, no attribution"}
"""


@pytest.fixture(scope="module")
def teacher_server():
    with FaultServerProcess() as srv:  # deterministic OpenAI-compatible answers, no faults
        yield srv


def _run(
    root: Path,
    base_url: str,
    student: Path,
    policy_dirs: list[str],
    *,
    use: str = "redistribute",
    stop_after: str = "train",
) -> RunConfig:
    root.mkdir(parents=True)
    prompts = root / "prompts.jsonl"
    rows = [{"id": f"t{n}", "text": f"order {n} for item {chr(97 + n)}"} for n in range(8)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = RunConfig.model_validate(
        {
            "name": "llama31",
            "run_dir": str(root / "run"),
            "teacher": {
                "provider": "openai_compatible",
                "model": TEACHER,
                "base_url": base_url,  # 127.0.0.1: self-hosted weights, so the license binds
                "price": {"input_per_mtok": 0, "output_per_mtok": 0},
            },
            "prompts": {"path": str(prompts), "id_field": "id"},
            "policy": {"use": use, "policy_dirs": policy_dirs},
            "budget": {"usd": 1},
            "harvest": {"concurrency": 4, "max_tokens": 16, "max_retries": 0},
            "dataset": {
                "dedupe": "none",
                "splits": {"train": 1.0, "validation": 0.0, "test": 0.0, "stratify_by": None},
            },
            "student": {"model": str(student)},
            "training": {"method": "sequence_kd", "max_steps": 1, "batch_size": 4},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pipeline(cfg, progress=False, stop_after=stop_after)
    return cfg


@pytest.fixture(scope="module")
def llama_run(teacher_server, tiny_chat_dir, tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("llama31") / "x"
    return _run(root, teacher_server.base_url, tiny_chat_dir, [])


@pytest.fixture(scope="module")
def agreement_run(teacher_server, tiny_chat_dir, tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("agreement") / "x"
    folder = root.parent / "policies"
    folder.mkdir()
    (folder / "acme.yaml").write_text(NO_OBLIGATIONS_POLICY, encoding="utf-8")
    return _run(root, teacher_server.base_url, tiny_chat_dir, [str(folder)])


def _terms(card: str) -> str:
    """The model card's terms section, up to the next second-level heading."""
    start = card.index("## Teacher terms and obligations")
    end = card.find("\n## ", start + 1)
    return card[start : end if end != -1 else None]


def _block(section: str, heading: str) -> list[str]:
    """The bullet lines under ``heading`` (up to the blank line that ends them)."""
    lines = section.splitlines()
    i = lines.index(heading) + 2
    out = []
    while i < len(lines) and lines[i].startswith("- "):
        out.append(lines[i])
        i += 1
    return out


def test_dataset_provenance_records_the_llama_31_decision(llama_run):
    run = Path(llama_run.run_dir)
    decision = json.loads((run / "policy.json").read_text(encoding="utf-8"))
    assert decision["policy_id"] == "meta-llama31-weights" and decision["clause"] == "§1.b.i"
    assert decision["obligations"]["name_prefix"] == "Llama"
    records = load_records(run / "dataset")
    assert len(records) == 8
    assert {r.provenance.policy_decision_id for r in records} == {decision["id"]}
    card = json.loads((run / "dataset" / "card.json").read_text(encoding="utf-8"))
    assert [p["id"] for p in card["policy"]] == [decision["id"]]


def test_llama_31_obligations_reach_the_exported_model_card(llama_run, tiny_chat_dir, tmp_path):
    run = Path(llama_run.run_dir)
    # No model_card_sections, no dataset: the export finds <run>/dataset beside <run>/train.
    out = export_student(
        run / "train", tmp_path / "student", base_model=str(tiny_chat_dir), merge=False
    )
    section = _terms((out / "README.md").read_text(encoding="utf-8"))
    decision_id = json.loads((run / "policy.json").read_text(encoding="utf-8"))["id"]
    assert decision_id in section and "| §1.b.i |" in section
    block = _block(section, HEADING)
    assert block[0] == NAME_PREFIX and ATTRIBUTION in block
    # the folder name "student" breaks the prefix: the card says so, right under the rule
    assert block[1].startswith('- This export is named "student", which does not begin with')
    assert "Read from the training dataset `dataset`: 8 records" in section
    assert f"openai_compatible:{TEACHER} (8)" in section
    assert "not legal advice" in section

    named = export_student(
        run / "train",
        tmp_path / "named",
        base_model=str(tiny_chat_dir),
        merge=False,
        name="Llama-ticket-extractor",
    )
    card = (named / "README.md").read_text(encoding="utf-8")
    assert "\n# Llama-ticket-extractor\n" in card
    block = _block(_terms(card), HEADING)
    assert block[0] == NAME_PREFIX and ATTRIBUTION in block
    assert not any("This export is named" in line for line in block)


def test_the_pipeline_export_stage_carries_them_too(llama_run):
    ctx = RunContext.from_config(llama_run, progress=False)
    out = Path(export_stage(ctx, TrainResult.load(ctx.layout.train)))
    card = (out / "README.md").read_text(encoding="utf-8")
    block = _block(_terms(card), HEADING)
    assert block[0] == NAME_PREFIX and ATTRIBUTION in block


def test_a_decision_without_obligations_adds_none(agreement_run, tiny_chat_dir, tmp_path):
    run = Path(agreement_run.run_dir)
    decision = json.loads((run / "policy.json").read_text(encoding="utf-8"))
    assert decision["policy_id"] == "acme-meta-agreement" and decision["decision"] == "allow"
    out = export_student(
        run / "train", tmp_path / "student", base_model=str(tiny_chat_dir), merge=False
    )
    section = _terms((out / "README.md").read_text(encoding="utf-8"))
    assert decision["id"] in section and "ACME-Meta Model Agreement (2026-01-01)" in section
    assert "must begin with" not in section and "Built with Llama" not in section
    assert "### Obligations" not in section and "This export is named" not in section


def test_records_citing_an_unrecorded_decision_refuse_to_export(llama_run, tiny_chat_dir, tmp_path):
    run = Path(llama_run.run_dir)
    bare = tmp_path / "elsewhere" / "dataset"
    shutil.copytree(run / "dataset", bare)
    (bare / "card.json").unlink()  # no card, no policy.json beside it: the decision is lost
    with pytest.raises(DataError, match=r"records cite terms decision pd-\w+ .*no file records"):
        export_student(
            run / "train",
            tmp_path / "student",
            base_model=str(tiny_chat_dir),
            merge=False,
            dataset=bare,
        )
    assert not (tmp_path / "student").exists()


def test_export_rechecks_the_students_intended_use(agreement_run, tiny_chat_dir, tmp_path):
    run = Path(agreement_run.run_dir)
    # The agreement covers redistribution only; the built-in Llama 3.1 license then governs
    # a commercial student, and its obligations come with it.
    out = export_student(
        run / "train",
        tmp_path / "student",
        base_model=str(tiny_chat_dir),
        merge=False,
        intended_use="commercial",
    )
    section = _terms((out / "README.md").read_text(encoding="utf-8"))
    assert "ACME-Meta Model Agreement" in section
    assert "Llama 3.1 Community License Agreement" in section and NAME_PREFIX in section


# --------------------------------------------------------------------------- issue 19 item 5


def test_the_model_card_holds_no_absolute_local_path(llama_run, tiny_chat_dir):
    """The card travels with the student (a hub upload, a colleague's machine): it names the
    run's folders relative to the run, never this machine's layout."""
    ctx = RunContext.from_config(llama_run, progress=False)
    out = Path(export_stage(ctx, TrainResult.load(ctx.layout.train)))
    card = (out / "README.md").read_text(encoding="utf-8")
    root = Path(llama_run.run_dir).resolve()
    package = str(Path(apidistill.__file__).resolve().parent)  # its built-in policy files
    for local in (
        str(root),
        str(root.parent),
        str(Path(tiny_chat_dir).resolve()),
        "/tmp/",
        package,
    ):
        assert local not in card, (local, card)
    assert "apidistill/policies/meta.yaml" in card  # the built-in policy, named in the package
    assert "apidistill serve --model student" in card  # from the run folder
    assert "base_model:" in card and f'"{Path(tiny_chat_dir).name}"' in card
    # the vLLM script still works from anywhere: it finds its own folder
    script = (out / "serve_vllm.sh").read_text(encoding="utf-8")
    assert str(root) not in script and '$(dirname "$0")' in script


# --------------------------------------------------------------------------- issue 19 item 7

# Internal use only: a (fictional) signed agreement that forbids competing students.
INTERNAL_ONLY_POLICY = """\
policies:
  - id: acme-internal-only
    provider: meta
    channel: weights
    models: ["llama-3.1-*"]
    document: ACME-Meta Internal Evaluation Agreement
    effective_date: 2026-01-01
    checked_on: 2026-11-24
    rules:
      internal: {decision: allow, clause: "§2", reason: "internal evaluation"}
      competing: {decision: deny, clause: "§5", reason: "no competing products"}
"""


def test_train_rechecks_the_terms_for_the_runs_use(teacher_server, tiny_chat_dir, tmp_path):
    """docs/policies.md: training re-checks the dataset's terms for the run's intended use.
    Data harvested for ``internal`` use does not train a ``competing`` student because the
    run file's ``policy.use`` was changed afterwards: ``apidistill train`` refuses before
    training, and trains once the use is the one the data was bought for."""
    import subprocess
    import sys

    import yaml

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "acme.yaml").write_text(INTERNAL_ONLY_POLICY, encoding="utf-8")
    cfg = _run(
        tmp_path / "x",
        teacher_server.base_url,
        tiny_chat_dir,
        [str(folder)],
        use="internal",
        stop_after="dataset",
    )
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["policy"]["use"] = "competing"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    train_dir = Path(cfg.run_dir) / "train"

    def train() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "apidistill", "train", str(run_file)],
            capture_output=True, text=True, timeout=600,
            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        )  # fmt: skip

    denied = train()
    out = " ".join((denied.stdout + denied.stderr).split())
    assert denied.returncode == 2, out
    assert "for use 'competing': deny under ACME-Meta Internal Evaluation Agreement" in out, out
    assert "choose a teacher whose terms allow this use" in out  # what to do about it
    assert not train_dir.exists()  # refused before a single step
    data["policy"]["use"] = "internal"
    run_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    ok = train()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "trained:" in ok.stdout and train_dir.is_dir()
