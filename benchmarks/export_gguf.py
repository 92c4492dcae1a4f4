"""GGUF export: file size and greedy agreement with the transformers student, per quantization.

The student: the embedded SmolLM2-135M-Instruct with a LoRA trained briefly by apidistill
(sequence KD on the gold answers of the demo tickets' training split, the demo student's
system prompt; its effect is checked: the merged logits differ from the base's), exported by
:func:`apidistill.export.formats.export_formats` as f16, q8_0 and q4_k_m GGUF. Prompts: the
demo's held-out split (the tickets of ``apidistill/demo_data/tickets.jsonl`` that
:func:`apidistill.data.splits.make_splits` puts in ``test`` with the default split
settings), the user's message only: the system prompt comes from the exported template.

Each GGUF runs in llama.cpp (llama-cpp-python, threads = physical cores, temperature 0,
repeat penalty 1.0) on the same prompt token ids as the transformers student (float32,
greedy); an answer agrees when the two texts are equal (:mod:`apidistill.export.agreement`).

Usage: python -m benchmarks.export_gguf [--prompts 84] [--max-tokens 40] [--steps 24]
[--threads N] [--quick]
Writes benchmarks/out/export_gguf.json and export_gguf.md (sizes, ratios vs f16, agreement).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import md_table, out_dir, write_result

BASE = "smollm2-135m-instruct"
SYSTEM = "Extract the order number and product from the support ticket."
QUANTS = ("f16", "q8_0", "q4_k_m")


def _ticket_records() -> list[Any]:
    """The demo tickets as records (completion = gold), split as the demo's defaults split."""
    from apidistill.config import SplitConfig
    from apidistill.data.splits import make_splits
    from apidistill.records import Record
    from apidistill.resources import demo_data_dir

    rows = [
        json.loads(line)
        for line in (demo_data_dir() / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    recs = [Record(id=r["id"], prompt=r["text"], completion=r["gold"]) for r in rows]
    return make_splits(recs, SplitConfig()).records


def trained_student(folder: Path, *, steps: int = 24) -> Any:
    """A LoRA student trained briefly (sequence KD on the gold answers of the training split,
    the demo's system prompt): short, confident answers, as a distilled student gives."""
    from apidistill.config import LoraConfig, StudentConfig, TrainingConfig
    from apidistill.train.api import train_student

    train = [r for r in _ticket_records() if r.split == "train"]
    return train_student(
        train,
        None,
        student=StudentConfig(model=BASE, system_prompt=SYSTEM),
        training=TrainingConfig(
            method="sequence_kd",
            lora=LoraConfig(r=8, alpha=16, dropout=0.0),
            max_steps=steps,
            learning_rate=2e-3,
            batch_size=8,
            max_length=256,
        ),
        out_dir=folder,
        progress=False,
    )


def heldout_conversations(limit: int | None = None) -> list[list[dict[str, str]]]:
    """The demo's held-out tickets as student conversations (system prompt + ticket)."""
    test = [r for r in _ticket_records() if r.split == "test"]
    # The user's message only: the system prompt comes from the exported chat template.
    convs = [[{"role": "user", "content": r.prompt or ""}] for r in test]
    return convs[:limit] if limit else convs


def logit_change(adapter: Path) -> float:
    """Largest change the merged LoRA makes to the base's next-token logits on one prompt."""
    import torch

    from apidistill.model_loading import load_model, load_tokenizer

    tok = load_tokenizer(BASE)
    ids = torch.tensor([tok.encode("Order 1234-5678: the Meridian Air Fryer is broken.")])
    with torch.no_grad():
        base = load_model(BASE)(ids).logits
        merged = load_model(BASE, adapter=str(adapter)).merge_and_unload()(ids).logits
    return float((merged - base).abs().max())


def run(
    work: Path,
    *,
    prompts: int | None,
    max_tokens: int,
    quants: tuple[str, ...] = QUANTS,
    steps: int = 24,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train and export the student, measure every quantization; the numbers as a dict."""
    from apidistill.export.agreement import gguf_agreement
    from apidistill.export.formats import export_formats
    from apidistill.model_loading import load_model, load_tokenizer

    t = time.perf_counter()
    result = trained_student(work / "train", steps=steps)
    train_s = time.perf_counter() - t
    delta = logit_change(result.final_dir)
    t = time.perf_counter()
    written = export_formats(
        result, work / "export", ["merged", "gguf"], gguf_quants=list(quants), name="student"
    )
    export_s = time.perf_counter() - t
    merged = written["merged"]
    model, tok = load_model(str(merged)), load_tokenizer(str(merged))
    convs = heldout_conversations(prompts)
    rows: dict[str, Any] = {}
    for q in quants:
        path = written["gguf"] / f"student-{q}.gguf"
        t = time.perf_counter()
        agree = gguf_agreement(path, model, tok, convs, max_tokens=max_tokens, threads=threads)
        rows[q] = {
            "bytes": path.stat().st_size,
            "agreement": round(agree.rate, 4),
            "agreeing": agree.same,
            "prompts": agree.total,
            "seconds": round(time.perf_counter() - t, 1),
            "disagreements": [{"transformers": a, "gguf": b} for a, b in agree.pairs if a != b][:5],
        }
    f16 = rows.get("f16", {}).get("bytes")
    for r in rows.values():
        r["size_vs_f16"] = round(r["bytes"] / f16, 3) if f16 else None
    return {
        "student": f"{BASE} + LoRA r=8 trained {steps} steps (sequence KD on the gold "
        "answers of the demo's training split, the demo's system prompt baked in)",
        "train_s": round(train_s, 1),
        "max_logit_change_from_lora": round(delta, 4),
        "export_s": round(export_s, 1),
        "max_tokens": max_tokens,
        "quants": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = [
        (
            q,
            f"{r['bytes'] / 1e6:.1f}",
            r["size_vs_f16"],
            f"{r['agreement']:.1%} ({r['agreeing']}/{r['prompts']})",
        )
        for q, r in doc["quants"].items()
    ]
    return (
        "## export_gguf\n\n"
        f"{doc['student']}; the merged LoRA moves the logits by up to "
        f"{doc['max_logit_change_from_lora']}. Greedy answers ({doc['max_tokens']} tokens) of "
        "llama.cpp on each GGUF against the transformers student (float32), demo held-out "
        "tickets.\n\n" + md_table(["quant", "MB", "size vs f16", "greedy agreement"], rows) + "\n"
    )


def append_results_md(doc: dict[str, Any], path: Path | None = None) -> None:
    """A standalone run appends one row to RESULTS.md's appendix."""
    from benchmarks.common import HERE
    from benchmarks.report import APPENDIX_HEADER

    path = path or HERE / "RESULTS.md"
    m = doc.get("machine", {})
    cells = "<br>".join(
        f"{q}: {r['bytes'] / 1e6:.1f} MB ({r['size_vs_f16']}× f16), agreement "
        f"{r['agreement']:.1%} ({r['agreeing']}/{r['prompts']})"
        for q, r in doc["quants"].items()
    )
    row = (
        f"| {doc['date'][:10]} | export_gguf.py | {doc['student']}; {doc['max_tokens']} "
        f"tokens, greedy | {cells} | {m.get('cpu')}, {m.get('cores')} cores, load average "
        f"{(m.get('load_avg_1_5_15') or ['?'])[0]}; llama-cpp-python, repeat penalty 1.0 |\n"
    )
    text = path.read_text(encoding="utf-8")
    if APPENDIX_HEADER.split("\n")[0] not in text:
        text = text.rstrip("\n") + "\n\n" + APPENDIX_HEADER
    path.write_text(text.rstrip("\n") + "\n" + row, encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=None, help="held-out prompts (default all)")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--steps", type=int, default=24, help="training steps of the student")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (physical)")
    ap.add_argument("--quick", action="store_true", help="8 prompts, 24 tokens, 8 steps")
    ap.add_argument("--no-results-md", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    prompts = 8 if args.quick else args.prompts
    max_tokens = 24 if args.quick else args.max_tokens
    with tempfile.TemporaryDirectory(prefix="export_gguf") as tmp:
        steps = 8 if args.quick else args.steps
        doc = run(
            Path(tmp), prompts=prompts, max_tokens=max_tokens, steps=steps, threads=args.threads
        )
    path = write_result("export_gguf", doc, mode="quick" if args.quick else "full", started=t0)
    if not args.no_results_md:
        append_results_md(json.loads(path.read_text(encoding="utf-8")))
    (out_dir() / "export_gguf.md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
