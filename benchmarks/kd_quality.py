"""Distillation quality at equal teacher samples: base vs sequence KD vs top-20 KD vs unbiased.

The demo task (examples/demo): the teacher is SmolLM2-135M-Instruct with the prototype
prompt (1,570 tokens of instruction and 16 shots); the student is the same base model with
only a one-line instruction, LoRA-distilled (r 16, all linear layers, lr 5e-4, batch 8) by
:func:`apidistill.train.api.train_student`. Arms, each trained on the same N teacher
samples (the same tickets, the same seed):

- ``base``: no training (the starting point);
- ``sequence_kd``: cross-entropy on the teacher's greedy answers;
- ``topk_tail``: logprob KD, forward KL over the teacher's top-20 + tail bucket, α = 0.5;
- ``unbiased``: logprob KD with the unbiased sampled-token target, α = 0.5, on answers the
  teacher *sampled at T = 1* (the target is only unbiased for such samples).

Held-out (the last 32 tickets, greedy teacher answers): KL to the teacher (nats/token,
top-20 + tail, :mod:`apidistill.eval.scoring`, bootstrap interval over records), top-1
token agreement under teacher forcing, and — from the student's own greedy answers —
answer agreement with the teacher (both fields equal) and exact match with gold.

Training budget: one epoch per size (so the sizes are also a steps axis: 3, 6, 12 steps),
plus one ``converged`` cell that trains the smallest size for the largest size's 12 steps.
Each cell compares top-20 KD with sequence KD on KL, top-1 and answer agreement (medians over
seeds; a tie is not a win).

Scaled down to fit the 30-minute suite on 2 CPU cores (a step costs ~4 s): see
``FULL`` / ``QUICK`` and RESULTS.md, which states the reduction. Teacher targets are
generated once and cached (``benchmarks/kd_targets.py``).

Usage: python -m benchmarks.kd_quality [--quick] [--sizes 24 48 96] [--epochs 1 | --steps 12]
  [--seeds 0 1 2] [--converged-steps 12] [--harvest greedy|sampled] [--kd-alpha 0.5]
Writes out/kd_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks import kd_targets
from benchmarks.common import spread, write_result

ARMS = ("base", "sequence_kd", "topk_tail", "unbiased")
METRICS = {"kl": "lower", "top1_agreement": "higher", "answer_agreement": "higher"}
# A LoRA step (batch 8, no dropout) costs ~4 s on 2 idle cores, measured in train_student:
# 1 epoch over 24 + 48 + 96 samples for 3 arms, plus 2 more seeds at 24, is 81 steps
# (~5.5 min), 16 evaluations on 32 held-out tickets, and the teacher targets (224 requests,
# ~3 min, cached). Sizes span 4x as the 250/500/1000 do. One epoch at 24 samples is
# 3 steps, too few to learn the answer format, so the grid is also a steps axis; the
# ``converged`` cell trains the smallest size as many steps as the largest gets (12, i.e.
# 4 epochs), sequence vs top-20 KD only (+2 trainings, ~2.5 min): equal samples, enough steps.
FULL = {
    "sizes": [24, 48, 96],
    "seeds": [0],
    "extra_seeds": [1, 2],
    "epochs": 1.0,
    "test": 32,
    "steps": -1,
    "kd_alpha": 0.5,
    "harvest": "greedy",  # training targets of the non-unbiased arms
    "converged": {"size": 24, "steps": 12},
}
QUICK = {
    "sizes": [16],
    "seeds": [0],
    "extra_seeds": [],
    "epochs": 1.0,
    "test": 8,
    "steps": -1,
    "kd_alpha": 0.5,
    "harvest": "greedy",
    "converged": None,
}


def budget_label(recipe: dict[str, Any]) -> str:
    """How long each arm of a cell trained: a fixed number of steps, or epochs."""
    steps = recipe.get("steps", -1)
    if steps and steps > 0:
        return f"{steps} steps"
    epochs = recipe["epochs"]
    return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")


def training_config(arm: str, recipe: dict[str, Any], seed: int) -> Any:
    """The arm's training settings under ``recipe`` (epochs or steps, KD α) and ``seed``."""
    from apidistill.config import KDConfig, LoraConfig, TrainingConfig

    method = "sequence_kd" if arm == "sequence_kd" else "logprob_kd"
    loss = "unbiased" if arm == "unbiased" else "forward_kl"
    return TrainingConfig(
        method=method,
        kd=KDConfig(loss=loss, alpha=recipe["kd_alpha"], top_k=20),
        lora=LoraConfig(r=16, alpha=32, dropout=0.0),  # as the demo: dropout is 17% of a step
        epochs=recipe["epochs"],
        max_steps=recipe["steps"],
        learning_rate=5e-4,
        batch_size=8,
        warmup_ratio=0.1,
        seed=seed,
    )


def subset(n_pool: int, size: int, seed: int) -> list[int]:
    """Which pool tickets a (size, seed) cell trains on; every arm of the cell gets the same."""
    order = list(range(n_pool))
    random.Random(seed).shuffle(order)
    return sorted(order[:size])


async def _answers(model: Any, tok: Any, held: list[Any], instruction: str) -> list[str]:
    """The student's greedy answers to the held-out tickets, batched by the serve engine."""
    from apidistill.records import GenerationParams, Message
    from apidistill.serve.engine import ServeEngine

    engine = ServeEngine(model, tok, max_batch_size=16)
    params = GenerationParams(max_tokens=kd_targets.MAX_TOKENS, temperature=0.0)
    try:
        outs = await asyncio.gather(
            *(
                engine.generate(
                    [Message(role="system", content=instruction), *r.messages], None, params
                )
                for r in held
            )
        )
    finally:
        await engine.aclose()
    return [o[0].text for o in outs]


def evaluate(adapter: Path | None, held: list[Any], instruction: str) -> dict[str, Any]:
    """Held-out KL / top-1 (teacher forcing) and answer agreement / exact (generation)."""
    from apidistill.eval.scoring import score_records, summarize_scores
    from apidistill.model_loading import load_model, load_tokenizer

    task = kd_targets._demo_task()
    tok = load_tokenizer(kd_targets.MODEL)
    model = load_model(kd_targets.MODEL, adapter=str(adapter) if adapter else None)
    t0 = time.perf_counter()
    if hasattr(model, "merge_and_unload"):  # the served student is merged: score that
        model = model.merge_and_unload()
    scores = score_records(model, tok, held, system_prompt=instruction)
    kl = summarize_scores(scores, len(held), samples=1000, seed=0)
    scored_s = time.perf_counter() - t0
    answers = asyncio.run(_answers(model, tok, held, instruction))
    agree = [task.score(a, r.completion) for a, r in zip(answers, held, strict=True)]
    exact = [task.score(a, r.gold) for a, r in zip(answers, held, strict=True)]
    e = kl.kl_nats_per_token
    return {
        "kl": round(e.value, 5),
        "kl_ci95": [round(e.low, 5), round(e.high, 5)],
        "top1_agreement": round(kl.top1_agreement.value, 4),
        "answer_agreement": round(sum(agree) / len(held), 4),
        "exact_vs_gold": round(sum(exact) / len(held), 4),
        "disagree": [i for i, ok in enumerate(agree) if not ok],  # held-out indices
        "miss_gold": [i for i, ok in enumerate(exact) if not ok],
        "positions": kl.positions,
        "eval_s": round(time.perf_counter() - t0, 1),
        "score_s": round(scored_s, 1),
    }


def train_arm(
    arm: str, train: list[Any], recipe: dict[str, Any], seed: int, tmp: Path
) -> dict[str, Any]:
    from apidistill.config import StudentConfig
    from apidistill.train.api import train_student

    student = StudentConfig(model=kd_targets.MODEL, system_prompt=kd_targets.instruction())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_student(
            train,
            None,
            student=student,
            training=training_config(arm, recipe, seed),
            # one folder per cell: the 12-step cell must not reuse the 1-epoch one's
            out_dir=tmp / f"{arm}-{len(train)}-{seed}-{budget_label(recipe).replace(' ', '')}",
            resume=False,
            progress=False,
        )
    return {"adapter": res.adapter_dir, "steps": res.steps, "train_s": res.train_seconds}


def run_cell(
    size: int,
    seed: int,
    arms: list[str],
    data: dict[str, list[Any]],
    held: list[Any],
    recipe: dict[str, Any],
    tmp: Path,
    base_row: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    instruction = kd_targets.instruction()
    idx = subset(len(data["greedy"]), size, seed)
    rows = []
    for arm in arms:
        row: dict[str, Any] = {
            "size": size,
            "seed": seed,
            "arm": arm,
            "budget": budget_label(recipe),
        }
        if arm == "base":
            row.update(base_row or evaluate(None, held, instruction))
        else:
            kind = "sampled" if arm == "unbiased" else recipe["harvest"]
            trained = train_arm(arm, [data[kind][i] for i in idx], recipe, seed, tmp)
            row.update(steps=trained["steps"], train_s=trained["train_s"])
            row.update(evaluate(trained["adapter"], held, instruction))
        rows.append(row)
        print(
            f"[n={size} seed={seed} {row['budget']}] {arm}: KL {row['kl']:.4f}, top-1 "
            f"{row['top1_agreement']:.3f}, answers {row['answer_agreement']:.3f}",
            flush=True,
        )
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (size, training budget) and arm: spread over seeds. Then, per cell, whether top-20
    KD beat sequence KD on each metric (medians over seeds; a tie is not a win), and whether
    it did so in every cell. ``base`` rows share one evaluation and join no comparison."""
    keys = list(dict.fromkeys((r["size"], r.get("budget", "")) for r in rows))
    cells: dict[str, Any] = {}
    for size, budget in keys:
        for arm in dict.fromkeys(r["arm"] for r in rows):
            mine = [
                r
                for r in rows
                if r["size"] == size and r.get("budget", "") == budget and r["arm"] == arm
            ]
            if not mine:
                continue
            cells[f"{size}/{budget}/{arm}"] = {
                "size": size,
                "budget": budget,
                "arm": arm,
                "seeds": [r["seed"] for r in mine],
                **{
                    k: spread([r[k] for r in mine], 4)
                    for k in ("kl", "top1_agreement", "answer_agreement", "exact_vs_gold")
                },
            }
    versus: dict[str, Any] = {}
    for size, budget in keys:
        lp = cells.get(f"{size}/{budget}/topk_tail")
        sq = cells.get(f"{size}/{budget}/sequence_kd")
        if not (lp and sq):
            continue
        cmp: dict[str, Any] = {"size": size, "budget": budget}
        for metric, better in METRICS.items():
            a, b = lp[metric]["median"], sq[metric]["median"]
            cmp[metric] = {
                "topk_tail": a,
                "sequence_kd": b,
                "ratio": round(a / b, 3) if b else None,
                "beats": a < b if better == "lower" else a > b,
                "tie": a == b,
            }
        versus[f"{size}/{budget}"] = cmp
    every = {m: bool(versus) and all(c[m]["beats"] for c in versus.values()) for m in METRICS}
    return {
        "cells": cells,
        "logprob_vs_sequence": versus,
        "logprob_beats_sequence_in_every_cell": every,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--extra-seeds", type=int, nargs="*", help="more seeds at the smallest size")
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--steps", type=int, help="optimizer steps per arm (overrides --epochs)")
    ap.add_argument("--kd-alpha", type=float, help="weight of the KD term in the logprob arms")
    ap.add_argument("--harvest", choices=("greedy", "sampled"), help="training targets")
    ap.add_argument("--test", type=int, help="held-out tickets")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument(
        "--converged-steps",
        type=int,
        help="steps for the extra smallest-size cell (sequence vs top-20 KD); 0 skips it",
    )
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    for key in ("sizes", "seeds", "extra_seeds", "epochs", "steps", "kd_alpha", "test", "harvest"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    if args.converged_steps is not None:
        plan["converged"] = (
            {"size": min(plan["sizes"]), "steps": args.converged_steps}
            if args.converged_steps > 0
            else None
        )
    started = time.perf_counter()
    sizes = sorted(plan["sizes"])
    pool, held_tickets = kd_targets.split_tickets(max(sizes), plan["test"])
    data: dict[str, list[Any]] = {}
    target_info: dict[str, Any] = {}
    data["greedy"], target_info["greedy"] = kd_targets.targets(pool, "greedy")
    if "unbiased" in args.arms or plan["harvest"] == "sampled":
        data["sampled"], target_info["sampled"] = kd_targets.targets(pool, "sampled")
    held, target_info["held_out"] = kd_targets.targets(held_tickets, "greedy")
    targets_s = round(time.perf_counter() - started, 1)
    task = kd_targets._demo_task()
    teacher_wrong = [i for i, r in enumerate(held) if not task.score(r.completion, r.gold)]

    rows: list[dict[str, Any]] = []
    base_row: dict[str, Any] | None = None
    cells = [(s, seed, plan, args.arms) for s in sizes for seed in plan["seeds"]]
    cells += [
        (sizes[0], seed, plan, args.arms)
        for seed in plan["extra_seeds"]
        if seed not in plan["seeds"]
    ]
    conv = plan.get("converged")
    conv_arms = [a for a in ("sequence_kd", "topk_tail") if a in args.arms]
    if conv and conv_arms:
        conv_recipe = {**plan, "steps": conv["steps"]}
        cells.append((conv["size"], plan["seeds"][0], conv_recipe, conv_arms))
    with tempfile.TemporaryDirectory(prefix="kdq-") as tmp:
        for size, seed, recipe, arms in cells:
            new = run_cell(size, seed, arms, data, held, recipe, Path(tmp), base_row)
            base_row = base_row or next(
                (
                    {k: v for k, v in r.items() if k not in ("size", "seed", "arm", "budget")}
                    for r in new
                    if r["arm"] == "base"
                ),
                None,
            )
            rows.extend(new)
    payload = {
        "setting": {
            "task": "examples/demo (order_id + product), SmolLM2-135M teacher with the "
            "prototype prompt, student without it",
            "sizes": sizes,
            "seeds": plan["seeds"],
            "extra_seeds_at_smallest": plan["extra_seeds"],
            "epochs": plan["epochs"],
            "steps": plan["steps"],
            "budget": budget_label(plan),
            "converged": conv if conv and conv_arms else None,
            "train_targets": plan["harvest"],
            "held_out_tickets": len(held),
            "teacher_wrong": teacher_wrong,  # held-out indices where the teacher misses gold
            "demo_fingerprint": kd_targets.fingerprint(),
            "arms": args.arms,
            "lora": "r 16, alpha 32, all-linear",
            "lr": 5e-4,
            "batch": 8,
            "kd_alpha": plan["kd_alpha"],
            "top_k": kd_targets.TOP_K,
            "teacher_targets_s": targets_s,
            "targets": target_info,
            "reduction": "issue 10 asks for 250/500/1000 samples x 3 seeds; here "
            f"{'/'.join(map(str, sizes))} samples, {len(plan['seeds'])} seed(s) each plus "
            f"{len(plan['extra_seeds'])} more at the smallest, {budget_label(plan)}, "
            "to fit the 30-minute suite on 2 CPU cores",
        },
        "rows": rows,
        **summarize(rows),
    }
    seeds = sorted({r["seed"] for r in rows})
    path = write_result(
        "kd_quality",
        payload,
        mode="quick" if args.quick else "full",
        seeds=seeds,
        started=started,
    )
    print(json.dumps(payload["logprob_beats_sequence_in_every_cell"], indent=2))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
