"""More than one process (issue 20, item 6): ``torchrun --nproc_per_node 2`` (gloo, CPU) runs
``apidistill run`` on a tiny random-init student against a loopback teacher.

One run checks what a launcher must not change: the teacher is asked once per prompt (rank 0
harvests, rank 1 waits), the two ranks form one DDP group (half the steps of one process),
one set of outputs is written, and the metrics reported are global — the evaluation CE and
agreement equal a single-process recomputation over the whole validation split, which no
rank's half of it gives.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from apidistill.data.store import load_records
from apidistill.model_loading import load_model, load_tokenizer
from apidistill.testing.fault_server import FaultServerProcess
from apidistill.train.api import TrainResult
from apidistill.train.collate import build_examples

PROMPTS = 32  # 16 train (8 steps of 2 in one process, 4 per rank in two), 16 validation
BATCH = 2


def _run_file(root: Path, base_url: str, student: Path) -> Path:
    prompts = root / "prompts.jsonl"
    rows = [{"id": f"p{n}", "text": f"order {n} item {chr(97 + n % 26)}"} for n in range(PROMPTS)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = {
        "name": "ddp",
        "run_dir": str(root / "run"),
        "teacher": {
            "provider": "openai_compatible",
            "model": "fault-model",
            "base_url": base_url,
            "price": {"input_per_mtok": 0, "output_per_mtok": 0},
        },
        "prompts": {"path": str(prompts), "id_field": "id"},
        "policy": {"use": "internal", "acknowledge_unknown": "test: loopback teacher"},
        "budget": {"usd": 1},
        "harvest": {"concurrency": 4, "max_tokens": 16, "max_retries": 0},
        "dataset": {
            "dedupe": "none",
            "splits": {"train": 0.5, "validation": 0.5, "test": 0.0, "stratify_by": None},
        },
        "student": {"model": str(student)},
        "training": {
            "method": "sequence_kd",
            "epochs": 1,
            "batch_size": BATCH,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
        },
    }
    run_file = root / "run.yaml"
    run_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return run_file


@pytest.fixture(scope="module")
def two_rank_run(tiny_chat_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    with FaultServerProcess() as teacher:
        run_file = _run_file(root, teacher.base_url, tiny_chat_dir)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        cmd = [*torchrun, "--standalone", "--nproc_per_node", "2", "-m", "apidistill"]
        proc = subprocess.run(
            [*cmd, "run", str(run_file), "--stop-after", "train", "--no-progress"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        stats = teacher.stats()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "run", stats, proc


@pytest.mark.slow
def test_the_teacher_is_asked_once_not_once_per_rank(two_rank_run):
    _, stats, _ = two_rank_run
    assert stats["received"] == PROMPTS


@pytest.mark.slow
def test_two_ranks_form_one_group_and_share_the_steps(two_rank_run):
    run, _, _ = two_rank_run
    result = TrainResult.load(run / "train")
    assert result.processes == 2
    assert result.train_examples == PROMPTS // 2
    assert result.steps == PROMPTS // 2 // BATCH // 2  # half of one process's 8 steps
    steps = [h["step"] for h in result.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_one_set_of_outputs(two_rank_run):
    run, _, _ = two_rank_run
    out = run / "train"
    names = {p.name for p in out.iterdir()}
    assert names == {"adapter", "checkpoints", "run_fingerprint.json", "train_result.json"}
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    leftovers = [p for p in run.parent.rglob("*") if ".tmp" in p.name or "partial" in p.name]
    assert leftovers == []


def _ce_and_agreement(model, examples) -> tuple[float, float, int]:
    """Token sums of CE and argmax agreement over the answer tokens, one example at a time."""
    ce = agree = n = 0.0
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=ex.input_ids[None]).logits[0, :-1].float()
            labels = ex.labels[1:]
            sel = labels != -100
            logq = logits[sel].log_softmax(-1)
            tgt = labels[sel]
            ce += float(-logq.gather(-1, tgt[:, None]).sum())
            agree += float((logq.argmax(-1) == tgt).sum())
            n += int(sel.sum())
    return ce, agree, int(n)


@pytest.mark.slow
def test_reported_metrics_are_global_not_rank_zeros(two_rank_run):
    run, _, _ = two_rank_run
    result = TrainResult.load(run / "train")
    val = load_records(run / "dataset", split="validation")
    assert len(val) == PROMPTS // 2
    tok = load_tokenizer(str(result.adapter_dir))
    examples = build_examples(val, tok, system_prompt=None, max_length=512).examples
    model = load_model(str(result.adapter_dir))
    parts = [_ce_and_agreement(model, examples[i : i + BATCH]) for i in range(0, len(val), BATCH)]
    ce, agree, n = (sum(p[j] for p in parts) for j in range(3))
    assert result.eval_metrics["eval_ce"] == pytest.approx(ce / n, abs=1e-4)
    assert result.eval_metrics["eval_top1_agreement"] == pytest.approx(agree / n, abs=1e-5)
    # no half of the split (what one rank evaluates) gives the global CE
    for half in itertools.combinations(range(len(parts)), len(parts) // 2):
        h_ce = sum(parts[i][0] for i in half) / sum(parts[i][2] for i in half)
        assert abs(h_ce - ce / n) > 1e-4


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_accelerate_cpu_flag_runs_one_process(tmp_path):
    """Why docs/scaling.md says ``--multi_gpu`` (not ``--cpu``) for several CPU processes:
    accelerate's ``--cpu`` always takes its single-process launcher."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os; print('WORLD', os.environ.get('WORLD_SIZE', '1'))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def worlds(*flags: str) -> list[str]:
        cmd = ["accelerate", "launch", *flags, "--num_processes", "2", str(probe)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return sorted(line for line in out.stdout.splitlines() if line.startswith("WORLD"))

    assert worlds("--cpu") == ["WORLD 1"]
    assert worlds("--multi_gpu") == ["WORLD 2", "WORLD 2"]


@pytest.mark.parametrize("rank", [1, 0])
def test_harvest_under_a_launcher_runs_on_rank_zero_only(rank, tiny_chat_dir, tmp_path):
    """``apidistill harvest`` started by a launcher on every rank: only rank 0 asks."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
    with FaultServerProcess() as teacher:
        run_file = _run_file(tmp_path, teacher.base_url, tiny_chat_dir)
        cmd = [sys.executable, "-m", "apidistill", "harvest", str(run_file), "--no-progress"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        received = teacher.stats()["received"]
    assert out.returncode == 0, out.stderr[-3000:]
    if rank:
        assert received == 0
        assert "rank 1 of 2: the harvest runs on rank 0 only" in out.stdout
        assert not (tmp_path / "run" / "answers.jsonl").exists()
    else:
        assert received == PROMPTS
        from apidistill.config import load_config
        from apidistill.pipeline.stages import RunContext, harvested_records

        ctx = RunContext.from_config(load_config(run_file), progress=False)
        assert len(harvested_records(ctx)) == PROMPTS


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ddp", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero3", "DEEPSPEED"),
    ],
)
def test_example_accelerate_configs_load(name, kind, monkeypatch):
    """accelerate itself reads each shipped config (it refuses unknown keys); DeepSpeed's
    JSON leaves what the run file sets on "auto" so the two cannot disagree."""
    from accelerate.commands.config.config_args import load_config_from_file

    monkeypatch.chdir(EXAMPLES.parents[1])  # the configs name their JSON from the repo root
    cfg = load_config_from_file(str(EXAMPLES / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.num_processes == 2
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        ds = json.loads(Path(cfg.deepspeed_config["deepspeed_config_file"]).read_text())
        stage = ds["zero_optimization"]["stage"]
        assert stage == int(name[-1])
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert ds[key] == "auto"
        assert cfg.deepspeed_config.get("zero3_init_flag", False) is (stage == 3)
        if stage == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_training_arguments_are_built_before_the_student_loads(
    tiny_chat_dir, tiny_teacher_records, tmp_path, monkeypatch
):
    """ZeRO-3 partitions weights at load time only if TrainingArguments (which registers the
    DeepSpeed config with transformers) exists before ``from_pretrained``."""
    from apidistill.config import StudentConfig, TrainingConfig
    from apidistill.train import session, student_model
    from apidistill.train.api import train_student

    order: list[str] = []
    real_args, real_load = session.build_training_arguments, student_model.load_student_model

    def args(*a, **k):
        order.append("args")
        return real_args(*a, **k)

    def load(*a, **k):
        order.append("model")
        return real_load(*a, **k)

    monkeypatch.setattr(session, "build_training_arguments", args)
    monkeypatch.setattr(student_model, "load_student_model", load)
    train_student(
        tiny_teacher_records[:4],
        None,
        student=StudentConfig(model=str(tiny_chat_dir)),
        training=TrainingConfig(max_steps=1, batch_size=4),
        out_dir=tmp_path,
        progress=False,
    )
    assert order == ["args", "model"]
