"""Peak memory and step time at real vocabularies: logprob KD vs sequence KD vs the unchunked loss.

A random-init Llama with a small hidden size (the loss, not the transformer, dominates then)
and the vocabulary of Qwen2.5 (151,936) or Gemma 3 (262,144), LoRA r=16 on all linear layers
as the trainer's default, random prompts/answers and a random top-20 teacher holding 0.95 of
the mass. Every (vocabulary, arm) runs in its own child process, so one arm's freed memory
cannot hide another's peak:

    sequence_kd             CE, chunked loss (the default trainer)
    logprob_kd              0.5 CE + 0.5 forward KL over top-20 + tail, chunked (default)
    logprob_kd_unchunked    the same loss from the full [B, T, V] logits (loss_chunk_elements=0)
    sequence_kd_unchunked   CE from the full logits (only with --arms)

Peak memory: on CPU the process's resident set — the peak (VmHWM) is reset through
/proc/self/clear_refs after the warm-up step and read after the timed steps, so ``step_peak``
is what a training step adds on top of the model, optimizer state and batch; on CUDA,
``torch.cuda.max_memory_allocated`` after a reset. A step is the Trainer's own
``training_step`` (forward + loss + backward) plus the optimizer step.

Targets (issue 20): logprob-KD step peak ≤ 1.2× sequence-KD, step time ≤ 1.15×.

Usage: python -m benchmarks.kd_memory [--quick] [--vocab 151936 262144] [--steps 4] [--arms ...]
Writes out/kd_memory.json and, run on its own, appends its rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, ROOT, fmt, md_table, write_result

ARMS = ("sequence_kd", "logprob_kd", "logprob_kd_unchunked", "sequence_kd_unchunked")
DEFAULT_ARMS = ARMS[:3]
# glibc raises its mmap threshold after a large free, after which freed tensors stay in the
# heap and the resident set no longer follows live memory; a fixed threshold keeps every
# tensor over 128 KiB in its own mapping, returned to the system when freed.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
VOCABS = {151_936: "Qwen2.5", 262_144: "Gemma 3"}
TOP_K = 20


# --------------------------------------------------------------------------- child


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)


def _examples(vocab: int, n: int, prompt: int, answer: int) -> list[Any]:
    import torch

    from apidistill.train.collate import Example

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        a = answer - 7 * i  # uneven answers, like real ones
        ids = torch.randint(0, vocab, (prompt + a,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        top_ids = torch.randint(0, vocab, (prompt + a, TOP_K), generator=g)
        top_ids[:, 0] = ids
        lps = torch.randn(prompt + a, TOP_K, generator=g).log_softmax(-1) + math.log(0.95)
        kd_mask = labels != -100
        lps[~kd_mask] = -math.inf
        out.append(Example(ids, labels, top_ids, lps, kd_mask))
    return out


def child(arm: str, vocab: int, a: argparse.Namespace) -> dict[str, Any]:
    """One arm in this process: build, warm up, then time ``a.steps`` steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from apidistill.config import KDConfig, LoraConfig
    from apidistill.train.collate import DistillCollator
    from apidistill.train.trainer import DistillTrainer, apply_lora

    cuda = a.device == "cuda"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=a.hidden,
        intermediate_size=2 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=a.prompt + a.answer + 8,
        tie_word_embeddings=False,
    )
    model = apply_lora(LlamaForCausalLM(cfg).to(a.device), LoraConfig())
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=a.batch,
            learning_rate=1e-4,
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            save_strategy="no",
        )
        examples = _examples(vocab, a.batch, a.prompt, a.answer)
        collate = DistillCollator(0, TOP_K)
        trainer = DistillTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=collate,
            kd=KDConfig(top_k=TOP_K, alpha=0.5),
            use_kd=arm.startswith("logprob_kd"),
            **({"loss_chunk_elements": 0} if arm.endswith("unchunked") else {}),
        )
        trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        trainer.current_gradient_accumulation_steps = 1
        batch = trainer._prepare_inputs(collate(examples))
        supervised = int((batch["labels"][:, 1:] != -100).sum())

        cpu_times: list[float] = []

        def step() -> float:
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.training_step(model, dict(batch))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            cpu_times.append(time.process_time() - c0)
            return time.perf_counter() - t0

        for _ in range(a.warmup):
            step()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            _reset_peak()
            base = _status_kib("VmRSS") * 1024
        del cpu_times[:]
        times = [step() for _ in range(a.steps)]
        peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return {
        "arm": arm,
        "vocab": vocab,
        "supervised_tokens": supervised,
        "padded_tokens": int(batch["input_ids"].numel()),
        "base_mb": round(base / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1),
        "step_peak_mb": round((peak - base) / 2**20, 1),
        "step_s": [round(t, 4) for t in times],
        "median_step_s": round(statistics.median(times), 4),
        "median_step_cpu_s": round(statistics.median(cpu_times), 4),
        "min_step_cpu_s": round(min(cpu_times), 4),
        "chunked": trainer._chunk_ok is True,
    }


# --------------------------------------------------------------------------- parent


def _run_child(arm: str, vocab: int, argv: list[str], timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.kd_memory", "--child", arm, "--vocab", str(vocab)]
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"arm": arm, "vocab": vocab, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"arm": arm, "vocab": vocab, "error": f"exit {done.returncode}: {' / '.join(tail)}"}
    return json.loads(lines[-1])


def _ratios(arms: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = arms.get(a, {}).get(key), arms.get(b, {}).get(key)
        return round(x / y, 3) if x and y else None

    return {
        "step_peak_logprob_vs_sequence": ratio("logprob_kd", "sequence_kd", "step_peak_mb"),
        "peak_logprob_vs_sequence": ratio("logprob_kd", "sequence_kd", "peak_mb"),
        "step_time_logprob_vs_sequence": ratio("logprob_kd", "sequence_kd", "median_step_s"),
        "step_cpu_logprob_vs_sequence": ratio("logprob_kd", "sequence_kd", "median_step_cpu_s"),
        "step_peak_unchunked_vs_chunked": ratio(
            "logprob_kd_unchunked", "logprob_kd", "step_peak_mb"
        ),
        "step_time_unchunked_vs_chunked": ratio(
            "logprob_kd_unchunked", "logprob_kd", "median_step_s"
        ),
    }


def run(a: argparse.Namespace, child_argv: list[str]) -> dict[str, Any]:
    by_vocab: dict[str, Any] = {}
    for vocab in a.vocab:
        arms = {arm: _run_child(arm, vocab, child_argv, a.timeout) for arm in a.arms}
        by_vocab[str(vocab)] = {"arms": arms, "ratios": _ratios(arms)}
    return {
        "setting": {
            "hidden": a.hidden,
            "layers": a.layers,
            "batch": a.batch,
            "prompt": a.prompt,
            "answer_max": a.answer,
            "top_k": TOP_K,
            "lora": "r=16 all-linear",
            "steps": a.steps,
            "warmup": a.warmup,
            "device": a.device,
            "arms": list(a.arms),
            "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
        },
        "vocab": by_vocab,
    }


def table(res: dict[str, Any]) -> str:
    """One markdown table: every arm at every vocabulary, with the ratios of that run."""
    rows = []
    for vocab, cell in res["vocab"].items():
        name = VOCABS.get(int(vocab), "")
        for arm in cell["arms"]:
            r = cell["arms"][arm]
            if "error" in r:
                rows.append([f"{int(vocab):,} {name}", arm, "—", "—", "—", "—", r["error"]])
                continue
            rows.append(
                [
                    f"{int(vocab):,} {name}",
                    arm,
                    fmt(r["step_peak_mb"], 0),
                    fmt(r["peak_mb"], 0),
                    fmt(r["median_step_s"], 3),
                    fmt(r["median_step_cpu_s"], 3),
                    f"{r['supervised_tokens']} supervised tokens",
                ]
            )
    out = [
        md_table(
            [
                "vocabulary",
                "arm",
                "step peak MiB",
                "process peak MiB",
                "median step s (wall)",
                "median step s (CPU)",
                "",
            ],
            rows,
        )
    ]
    for vocab, cell in res["vocab"].items():
        q = cell["ratios"]
        out.append(
            f"\nV = {int(vocab):,}: logprob/sequence step peak "
            f"{fmt(q['step_peak_logprob_vs_sequence'], 3)}× (target ≤ 1.2; process peak "
            f"{fmt(q['peak_logprob_vs_sequence'], 3)}×), step time "
            f"{fmt(q['step_time_logprob_vs_sequence'], 3)}× wall, "
            f"{fmt(q['step_cpu_logprob_vs_sequence'], 3)}× CPU (target ≤ 1.15); unchunked/chunked "
            f"logprob KD: step peak {fmt(q['step_peak_unchunked_vs_chunked'], 2)}×, step time "
            f"{fmt(q['step_time_unchunked_vs_chunked'], 2)}×."
        )
    return "\n".join(out)


def append_results_md(res: dict[str, Any]) -> None:
    """A standalone run appends one row per vocabulary to RESULTS.md's appendix."""
    path = HERE / "RESULTS.md"
    s, m = res["setting"], res.get("machine", {})
    for vocab, cell in res["vocab"].items():
        q = cell["ratios"]
        arms = cell["arms"]
        parts = [
            f"{arm}: step peak {fmt(r.get('step_peak_mb'), 0)} MiB, "
            f"{fmt(r.get('median_step_s'), 3)} s wall, {fmt(r.get('median_step_cpu_s'), 3)} s CPU"
            for arm, r in arms.items()
        ]
        row = (
            f"| {res['date'][:10]} | kd_memory.py | V = {int(vocab):,}, hidden {s['hidden']}, "
            f"{s['layers']} layers, LoRA r=16, batch {s['batch']} "
            f"({arms['sequence_kd'].get('supervised_tokens')} supervised tokens), top-20 | "
            f"logprob/seq step peak {fmt(q['step_peak_logprob_vs_sequence'], 3)}× "
            f"(target ≤ 1.2), step time {fmt(q['step_time_logprob_vs_sequence'], 3)}× wall, "
            f"{fmt(q['step_cpu_logprob_vs_sequence'], 3)}× CPU (target ≤ 1.15); "
            "unchunked/chunked peak "
            f"{fmt(q['step_peak_unchunked_vs_chunked'], 2)}×<br>{'<br>'.join(parts)} | "
            f"{s['device']} ({m.get('cpu')}, {m.get('cores')} cores, load average "
            f"{(m.get('load_avg_1_5_15') or ['?'])[0]}: wall times follow the load, CPU times "
            f"less so), one child process per arm, {s['steps']} timed steps after "
            f"{s['warmup']} warm-up |\n"
        )
        with path.open("a", encoding="utf-8") as fh:
            fh.write(row)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one vocabulary, short answers")
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, nargs="+", default=list(VOCABS))
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--answer", type=int, default=224, help="longest answer (tokens)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout", type=int, default=900, help="per child process, seconds")
    p.add_argument("--no-results-md", action="store_true")
    import torch

    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.quick:
        a.vocab, a.answer, a.steps = [151_936], 48, 1
    if a.child:
        print(json.dumps(child(a.child, a.vocab[0], a)))
        return
    started = time.perf_counter()
    child_argv = [
        *("--hidden", str(a.hidden), "--layers", str(a.layers), "--batch", str(a.batch)),
        *("--prompt", str(a.prompt), "--answer", str(a.answer), "--steps", str(a.steps)),
        *("--warmup", str(a.warmup), "--device", a.device),
    ]
    res = run(a, child_argv)
    path = write_result("kd_memory", res, mode="quick" if a.quick else "full", started=started)
    res = json.loads(path.read_text(encoding="utf-8"))
    print(table(res))
    if not a.no_results_md:
        append_results_md(res)


if __name__ == "__main__":
    main(sys.argv[1:])
