"""Cost of a logprob-KD training step vs a sequence-KD step (and TRL's SFTTrainer step).

Same model (embedded SmolLM2-135M-Instruct, LoRA r=16 on all linear layers), same batch
(8 records whose teacher answers and top-20 logprobs come from the model itself, prompted),
same process. Arms are interleaved step by step in a shuffled order so machine load hits all
arms alike; each arm has its own model copy and optimizer. A step is the Trainer's own
``training_step`` (forward + loss + backward) plus the optimizer step.

    arms: apidistill sequence_kd | apidistill logprob_kd (top-20 + tail, α = 0.5)
          | TRL SFTTrainer (completion-only loss, same token ids) when trl is installed

Targets (issue 8): logprob_kd ≤ 1.15 × sequence_kd; apidistill seq KD ≤ 1.05 × TRL.

Usage: python benchmarks/kd_overhead.py [--steps 8] [--warmup 2] [--device cpu|cuda]
Writes benchmarks/out/kd_overhead.json ($APIDISTILL_BENCH_OUT when set) and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
TEACHER_PROMPT = (
    "You read a customer message and reply with two lines: 'order_id: <digits>' and "
    "'product: <product name>'. No other words."
)
TICKETS = [
    "Hi, my order #48213 for a blue ceramic mug arrived broken, can you help?",
    "Hello team, order 7731-0042 (desk lamp, brass finish) is two weeks late.",
    "Good morning. I paid $39.90 for the wool scarf on order #55120 but got a hat.",
    "Hey, order 9902114: the phone case does not fit my phone. Tracking 1Z999AA1.",
    "Dear support, my garden hose from order #31007 leaks. Call me at 555-0134.",
    "Order #88412 — yoga mat, purple. Still not here after 10 days. Thanks, Ana",
    "Hi there, the espresso grinder (order 6620-1193) makes a loud noise.",
    "My order #70125 for two cotton towels shows delivered but nothing came.",
]


def _teacher_batch(device: str):
    from apidistill.model_loading import load_model, load_tokenizer
    from apidistill.records import Message
    from apidistill.train.localteacher import teacher_records

    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, device=device)
    recs = teacher_records(
        model,
        tok,
        TICKETS,
        teacher_prompt=[Message(role="system", content=TEACHER_PROMPT)],
        max_new_tokens=24,
        top_k=20,
    )
    return tok, recs


def _training_config(method: str):
    from apidistill.config import TrainingConfig

    # no warmup: the timed loop never steps the scheduler, and TRL's default has none either
    return TrainingConfig(
        method=method, batch_size=8, learning_rate=5e-4, max_steps=1000, warmup_ratio=0.0
    )


class _Arm:
    """One model + optimizer + the batch it steps on."""

    def __init__(self, name: str, trainer, batch) -> None:
        self.name, self.trainer, self.batch = name, trainer, batch
        self.model = trainer.model
        trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, device: str) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = self.trainer.training_step(self.model, dict(self.batch))
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.losses.append(float(loss))
        return dt


def _apidistill_arm(name: str, method: str, tok, recs, device: str, out: Path) -> _Arm:
    from transformers import set_seed

    from apidistill.model_loading import load_model
    from apidistill.train.collate import DistillCollator, build_examples
    from apidistill.train.session import build_training_arguments
    from apidistill.train.trainer import DistillTrainer, apply_lora

    training = _training_config(method)
    built = build_examples(
        recs, tok, system_prompt=None, max_length=512, top_k=20, with_kd=method == "logprob_kd"
    )
    collate = DistillCollator(tok.pad_token_id, 20)
    set_seed(0)
    model = apply_lora(load_model(MODEL, device=device), training.lora)
    args = build_training_arguments(training, out / name, has_eval=False)
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=built.examples,
        data_collator=collate,
        kd=training.kd,
        use_kd=method == "logprob_kd",
    )
    batch = trainer._prepare_inputs(collate(built.examples))
    return _Arm(name, trainer, batch)


def _trl_arm(tok, recs, device: str, out: Path) -> _Arm | None:
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return None
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed

    from apidistill.model_loading import load_model
    from apidistill.train.collate import build_examples

    built = build_examples(recs, tok, system_prompt=None, max_length=512)
    rows = {
        "input_ids": [e.input_ids.tolist() for e in built.examples],
        "completion_mask": [(e.labels != -100).long().tolist() for e in built.examples],
    }
    set_seed(0)
    model = load_model(MODEL, device=device)
    cfg = SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        max_length=512,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        completion_only_loss=True,
        bf16=False,
        fp16=False,
        use_cpu=device == "cpu",
        logging_steps=1000,
        save_strategy="no",
    )
    peft_cfg = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tok,
        peft_config=peft_cfg,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    return _Arm("trl_sft", trainer, batch)


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def run(steps: int, warmup: int, device: str) -> dict:
    warnings.filterwarnings("ignore")
    tok, recs = _teacher_batch(device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        arms = [
            _apidistill_arm("sequence_kd", "sequence_kd", tok, recs, device, out),
            _apidistill_arm("logprob_kd", "logprob_kd", tok, recs, device, out),
        ]
        trl = _trl_arm(tok, recs, device, out)
        if trl is not None:
            arms.append(trl)
        order = random.Random(0)
        for i in range(warmup + steps):
            order.shuffle(arms)
            for arm in arms:
                dt = arm.step(device)
                if i >= warmup:
                    arm.times.append(dt)
    by = {a.name: a for a in arms}
    tokens = int(by["sequence_kd"].batch["input_ids"].numel())
    res = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": MODEL,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "batch": {"examples": len(recs), "padded_tokens": tokens, "top_k": 20},
        "lora": {"r": 16, "target_modules": "all-linear"},
        "steps_timed": steps,
        "warmup_steps": warmup,
        "arms": {
            a.name: {
                **_summary(a.times),
                "times_s": [round(t, 4) for t in a.times],
                "first_loss": a.losses[0],
                "last_loss": a.losses[-1],
            }
            for a in arms
        },
    }
    med = {n: statistics.median(a.times) for n, a in by.items()}
    res["ratio_logprob_vs_sequence"] = round(med["logprob_kd"] / med["sequence_kd"], 3)
    if "trl_sft" in med:
        res["ratio_sequence_vs_trl"] = round(med["sequence_kd"] / med["trl_sft"], 3)
    return res


def append_results_md(res: dict) -> None:
    path = HERE / "RESULTS.md"
    if not path.is_file():
        path.write_text(
            "# Benchmark results\n\nRows are appended by the scripts in benchmarks/; "
            "numbers are measured on the machine named in each row's notes.\n\n"
            "| date | benchmark | setting | result | notes |\n|---|---|---|---|---|\n",
            encoding="utf-8",
        )
    arms = res["arms"]
    cells = [
        f"{name}: median {a['median_s']:.3f} s (min {a['min_s']:.3f}, max {a['max_s']:.3f})"
        for name, a in arms.items()
    ]
    ratios = f"logprob/seq {res['ratio_logprob_vs_sequence']:.3f}× (target ≤ 1.15)"
    if "ratio_sequence_vs_trl" in res:
        ratios += f"; seq/TRL {res['ratio_sequence_vs_trl']:.3f}× (target ≤ 1.05)"
    row = (
        f"| {res['date'][:10]} | kd_overhead.py | SmolLM2-135M LoRA r=16 all-linear, batch 8 "
        f"({res['batch']['padded_tokens']} padded tokens), top-20, {res['steps_timed']} steps "
        f"| {ratios}<br>{'<br>'.join(cells)} | {res['device']}, {res['torch_threads']} threads, "
        "interleaved arms, step = forward + backward + optimizer |\n"
    )
    with path.open("a", encoding="utf-8") as fh:
        fh.write(row)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    res = run(a.steps, a.warmup, a.device)
    out = Path(os.environ.get("APIDISTILL_BENCH_OUT") or HERE / "out")  # the suite sets it
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_overhead.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    append_results_md(res)
    print(json.dumps({k: v for k, v in res.items() if k != "arms"}, indent=2))
    for name, arm in res["arms"].items():
        print(
            f"{name:12s} median {arm['median_s']:.3f}s  min {arm['min_s']:.3f}  max {arm['max_s']:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
