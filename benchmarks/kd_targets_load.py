"""Loading same-tokenizer KD targets: pydantic objects per position vs compact arrays → tensors.

Issue #21 item 4: with a self-hosted teacher on the student's tokenizer, training used to
rebuild every stored position as 1 + k pydantic objects (``load_records``) only to turn them
back into ``[T, K]`` tensors (:func:`apidistill.train.collate.build_examples`); at 10k
records × 200 tokens × k = 20 that is ~42 million objects. The new path reads the dataset's
compact arrays (:func:`apidistill.data.store.iter_compact_records`) straight into the
tensors (:mod:`apidistill.train.compact_targets`). Both arms build the same examples (the
benchmark checks the tensors are equal) from one dataset written once with the fp16 codec.

Each arm runs in its own child process: after imports and the tokenizer, the peak resident
set (VmHWM) is reset through /proc/self/clear_refs, so ``peak_mb`` is what loading and
building add; ``load_s`` is the wall time of load + build.

Usage: python -m benchmarks.kd_targets_load [--records 400] [--tokens 100] [--k 20]
(the defaults finish in about a minute on 2 cores; the issue's 10k × 200 scales both arms)
Writes out/kd_targets_load.json and out/kd_targets_load.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, md_table, out_dir, write_result

ARMS = ("objects", "arrays")
CHARS = "abcdefghijklmnopqrstuvwxyz ,.0123456789"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _dataset(folder: Path, records: int, tokens: int, k: int, seed: int) -> None:
    """Same-tokenizer records on the char tokenizer: ids spell the completion, k ids each."""
    from apidistill.data.store import save_records
    from apidistill.records import Message, Record, TokenLogprob, TopLogprob
    from apidistill.testing.tiny_tokenizer import char_tokenizer

    tok = char_tokenizer()
    ids_of = {c: tok.convert_tokens_to_ids(c) for c in CHARS}
    pool = sorted(set(ids_of.values()))
    rng = random.Random(seed)
    out = []
    for r in range(records):
        text = "".join(rng.choice(CHARS) for _ in range(tokens))
        positions = []
        for c in text:
            alts = rng.sample(pool, min(k, len(pool)))
            lps = sorted((-rng.random() * 6 for _ in alts), reverse=True)
            top = [
                TopLogprob.model_construct(token_id=a, token="?", bytes=None, logprob=lp)
                for a, lp in zip(alts, lps, strict=True)
            ]
            positions.append(
                TokenLogprob.model_construct(
                    token_id=ids_of[c], token=c, bytes=None, logprob=lps[0], top=top
                )
            )
        out.append(
            Record(
                id=f"r{r}",
                messages=[Message(role="user", content=f"ticket {r}")],
                completion=text,
                logprobs=positions,
            )
        )
    save_records(out, folder, codec="fp16")


def _digest(built: Any) -> str:
    h = hashlib.sha256()
    for e in built.examples:
        for t in (e.input_ids, e.labels, e.topk_ids, e.topk_logprobs, e.kd_mask):
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def child(arm: str, folder: Path, k: int) -> dict[str, Any]:
    """Load + build in this process; the peak resident set is measured around it."""
    from apidistill.data.store import iter_compact_records, load_records
    from apidistill.testing.tiny_tokenizer import char_tokenizer
    from apidistill.train.align import StudentVocab
    from apidistill.train.collate import build_examples
    from apidistill.train.compact_targets import CompactLogprobs

    tok = char_tokenizer()
    vocab = StudentVocab.build(tok)
    kw = dict(system_prompt=None, max_length=4096, top_k=k, with_kd=True, vocab=vocab)
    base_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)
    started = time.perf_counter()
    if arm == "objects":
        built = build_examples(load_records(folder), tok, **kw)  # type: ignore[arg-type]
    else:
        light, compact = [], {}
        for rec, arr, table in iter_compact_records(folder):
            light.append(rec)
            if arr is not None and table is not None:
                compact[rec.id] = CompactLogprobs(arr, table)
        built = build_examples(light, tok, compact=compact, **kw)  # type: ignore[arg-type]
    load_s = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")
    return {
        "arm": arm,
        "load_s": round(load_s, 3),
        "peak_mb": round((peak_kib - base_kib) / 1024, 1),
        "examples": len(built.examples),
        "supervised_tokens": built.supervised_tokens,
        "digest": _digest(built),
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        t0 = time.perf_counter()
        _dataset(folder, a.records, a.tokens, a.k, a.seed)
        write_s = time.perf_counter() - t0
        arms = {}
        for arm in ARMS:
            cmd = [sys.executable, "-m", "benchmarks.kd_targets_load", "--child", arm]
            cmd += ["--dir", str(folder), "--k", str(a.k)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            arms[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    old, new = arms["objects"], arms["arrays"]
    positions = a.records * a.tokens
    return {
        "setting": {
            "records": a.records,
            "tokens_per_record": a.tokens,
            "top_k": a.k,
            "positions": positions,
            "objects_old_path": positions * (1 + a.k),
            "codec": "fp16",
            "dataset_write_s": round(write_s, 1),
        },
        "arms": arms,
        "same_examples": old["digest"] == new["digest"],
        "ratios": {
            "load_time_objects_vs_arrays": round(old["load_s"] / max(new["load_s"], 1e-9), 2),
            "peak_objects_vs_arrays": round(old["peak_mb"] / max(new["peak_mb"], 1e-9), 2),
        },
    }


def table(res: dict[str, Any]) -> str:
    s, q = res["setting"], res["ratios"]
    rows = [
        [arm, fmt(r["load_s"], 2), fmt(r["peak_mb"], 1), r["examples"], r["supervised_tokens"]]
        for arm, r in res["arms"].items()
    ]
    return "\n".join(
        [
            f"### kd_targets_load: {s['records']:,} records × {s['tokens_per_record']} tokens × "
            f"k = {s['top_k']} ({s['objects_old_path']:,} objects on the old path)",
            "",
            md_table(
                ["arm", "load + build (s)", "peak added (MiB)", "examples", "supervised"], rows
            ),
            "",
            f"objects/arrays: load time {fmt(q['load_time_objects_vs_arrays'], 2)}×, "
            f"peak memory {fmt(q['peak_objects_vs_arrays'], 2)}×; "
            f"identical examples: {res['same_examples']}.",
        ]
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=400)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.dir, a.k)))
        return
    started = time.perf_counter()
    res = run(a)
    path = write_result("kd_targets_load", res, mode="custom", seeds=[a.seed], started=started)
    res = json.loads(path.read_text(encoding="utf-8"))
    md = table(res)
    (out_dir() / "kd_targets_load.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    if not res["same_examples"]:
        raise SystemExit("the two paths built different examples")


if __name__ == "__main__":
    main(sys.argv[1:])
