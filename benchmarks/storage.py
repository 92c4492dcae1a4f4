"""Bytes per generated token of apidistill's logprob store vs provider-style JSON, and the
reconstruction error of what the store keeps.

Data (stated in the output): by default the embedded SmolLM2-135M-Instruct's exact softmax at
every position of answers it is teacher-forced on (Python standard-library module docstrings
as answers to "Describe the Python module X."; the "sampled" token is the text's token). ``--source zipf`` uses synthetic Zipf-shaped
softmaxes instead (no model needed). Each K (5, 20) is measured on the same tokens:

- provider JSON: the OpenAI chat ``logprobs.content`` array (token, logprob, bytes,
  top_logprobs) serialized compactly, as an API returns it;
- the store (fp16 and q8 codecs), teacher token ids known (self-hosted teacher) and unknown
  (API teacher: tokens' text + bytes), as whole Parquet shards divided by generated tokens;
- KL(p‖q) per position over the top-k + tail distribution: p from the original float64
  logprobs, q from what the store gives back.

Usage: python benchmarks/storage.py [--source model|zipf] [--prompts 40] [--tokens 400]
Writes benchmarks/out/storage.json and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from apidistill.data.store import load_records, save_records
from apidistill.records import Message, Record, TokenLogprob, TopLogprob

HERE = Path(__file__).resolve().parent


@dataclass
class Position:
    sampled_id: int
    sampled_lp: float
    top_ids: np.ndarray  # int64[Kmax]
    top_lps: np.ndarray  # float64[Kmax], descending


# Standard-library modules with long docstrings (stable for a Python version, no network).
MODULES = [
    "pdb",
    "configparser",
    "re",
    "socketserver",
    "statistics",
    "fileinput",
    "site",
    "wave",
    "ssl",
    "argparse",
    "json",
    "shelve",
    "csv",
    "cmd",
    "pyclbr",
    "socket",
    "hashlib",
    "timeit",
    "copy",
    "unittest",
    "pydoc",
    "uuid",
    "io",
    "plistlib",
    "heapq",
    "rlcompleter",
    "inspect",
    "struct",
    "sched",
    "doctest",
    "subprocess",
    "os",
    "codeop",
    "ast",
    "typing",
    "ftplib",
    "dbm",
    "sqlite3",
    "tempfile",
    "tokenize",
    "difflib",
    "smtplib",
    "collections",
    "random",
]


def _docstring(name: str) -> str:
    import importlib

    doc = importlib.import_module(name).__doc__ or name
    return " ".join(doc.split())


def model_positions(
    n_texts: int, max_tokens: int, kmax: int
) -> tuple[list[list[Position]], object]:
    """Teacher-forced: the model's exact softmax at every position of an answer made of a
    standard-library module docstring (one forward pass; sampling token by token on a shared
    2-core machine took ~1 s per token)."""
    import torch

    from apidistill.model_loading import load_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    out: list[list[Position]] = []
    for i in range(n_texts):
        name = MODULES[i % len(MODULES)]
        question = [{"role": "user", "content": f"Describe the Python module {name}."}]
        prompt = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(_docstring(name), add_special_tokens=False)["input_ids"][:max_tokens]
        ids = torch.tensor([p_ids + a_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1]
        logp = torch.log_softmax(logits.float(), dim=-1).double()
        top = torch.topk(logp, kmax, dim=-1)
        out.append(
            [
                Position(tid, float(logp[t, tid]), top.indices[t].numpy(), top.values[t].numpy())
                for t, tid in enumerate(a_ids)
            ]
        )
    return out, tok


def zipf_positions(n_prompts: int, max_new: int, seed: int, kmax: int) -> list[list[Position]]:
    """Softmax over a Zipf-shaped logit profile (exponent 1.1) with per-position noise and
    sharpness; token ids drawn from a Zipf-ranked 49k vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = 49_152
    rank_to_id = rng.permutation(vocab)
    out = []
    for _ in range(n_prompts):
        positions = []
        for _ in range(max_new):
            n = 4000
            logits = (-1.1 * np.log(np.arange(1, n + 1)) + rng.normal(0, 1.0, n)) * rng.uniform(
                0.7, 4.0
            )
            lp = logits - np.logaddexp.reduce(logits)
            ranks = np.minimum(rng.zipf(1.3, size=n) - 1, vocab - 1)
            ids, first = np.unique(rank_to_id[ranks], return_index=True)
            lp = lp[np.sort(first)][: len(ids)]
            ids = rank_to_id[ranks][np.sort(first)]
            order = np.argsort(-lp)
            s = int(rng.choice(len(lp), p=np.exp(lp) / np.exp(lp).sum()))
            positions.append(
                Position(int(ids[s]), float(lp[s]), ids[order[:kmax]], lp[order[:kmax]])
            )
        out.append(positions)
    return out


def to_records(data: list[list[Position]], k: int, *, ids_known: bool, text_of) -> list[Record]:
    recs = []
    for i, positions in enumerate(data):
        lps = []
        for p in positions:

            def entry(tid: int, lp: float, cls=TopLogprob):
                s = text_of(tid)
                return cls.model_construct(
                    token_id=tid if ids_known else None,
                    token=s,
                    bytes=list(s.encode("utf-8", "surrogatepass")),
                    logprob=lp,
                )

            top = [
                entry(int(t), float(v)) for t, v in zip(p.top_ids[:k], p.top_lps[:k], strict=True)
            ]
            tl = entry(p.sampled_id, p.sampled_lp, TokenLogprob)
            tl.top = top
            lps.append(tl)
        recs.append(
            Record(
                id=f"b{i}",
                messages=[
                    Message(
                        role="user",
                        content=f"Describe the Python module {MODULES[i % len(MODULES)]}.",
                    )
                ],
                completion="".join(x.token for x in lps),
                finish_reason="stop",
                logprobs=lps,
            )
        )
    return recs


def provider_json_bytes(recs: list[Record]) -> int:
    total = 0
    for r in recs:
        content = [
            {
                "token": p.token,
                "logprob": p.logprob,
                "bytes": p.bytes,
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in p.top
                ],
            }
            for p in r.logprobs or []
        ]
        total += len(
            json.dumps(
                {"logprobs": {"content": content, "refusal": None}}, separators=(",", ":")
            ).encode()
        )
    return total


def topk_tail(lps: np.ndarray) -> np.ndarray:
    p = np.exp(lps)
    return np.append(p, max(1.0 - p.sum(), 1e-12))


def kl_stats(orig: list[Record], back: list[Record]) -> dict[str, float]:
    kls, errs = [], []
    for a, b in zip(orig, back, strict=True):
        for x, y in zip(a.logprobs or [], b.logprobs or [], strict=True):
            p = topk_tail(np.array([t.logprob for t in x.top]))
            q = topk_tail(np.array([t.logprob for t in y.top]))
            kls.append(float(np.sum(p * (np.log(p) - np.log(q)))))
            errs.append(
                float(
                    np.max(
                        np.abs(
                            np.exp([t.logprob for t in x.top]) - np.exp([t.logprob for t in y.top])
                        )
                    )
                )
            )
    arr = np.array(kls)
    return {
        "kl_mean": float(arr.mean()),
        "kl_p99": float(np.quantile(arr, 0.99)),
        "kl_max": float(arr.max()),
        "max_abs_prob_err": float(max(errs)),
    }


def measure(recs: list[Record], codec: str, tokens: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="apidistill-bench-"))
    try:
        t0 = time.perf_counter()
        shards = save_records(recs, folder / "ds", codec=codec, overwrite=True, shard_records=10**9)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = load_records(folder / "ds")
        read_s = time.perf_counter() - t0
        size = sum(s.bytes for s in shards)
        table = sum(
            len(pq.ParquetFile(folder / "ds" / s.file).metadata.metadata[b"apidistill.token_table"])
            for s in shards
        )
        return {
            "bytes_per_token": size / tokens,
            # The per-shard token table (each distinct token's text/bytes/id once): a fixed
            # cost that shrinks per token as shards grow (writer default: 2000 records).
            "token_table_bytes_per_token": table / tokens,
            "write_s": write_s,
            "read_s": read_s,
            **kl_stats(recs, back),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=["model", "zipf"], default="model")
    ap.add_argument("--prompts", type=int, default=40, help="answers (records)")
    ap.add_argument("--tokens", type=int, default=400, help="max tokens per answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "out", help="folder for storage.json")
    ap.add_argument("--no-results-md", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.source == "model":
        data, tok = model_positions(args.prompts, args.tokens, 20)
        vocab_text = {}

        def text_of(tid: int) -> str:
            if tid not in vocab_text:
                vocab_text[tid] = tok.decode([tid])
            return vocab_text[tid]

        source = (
            "SmolLM2-135M-Instruct softmax (float32, teacher-forced on stdlib docstrings "
            "as answers)"
        )
    else:
        data = zipf_positions(args.prompts, args.tokens, args.seed, 20)

        def text_of(tid: int) -> str:
            return f"tok{tid}"

        source = "synthetic Zipf(1.1) softmax, Zipf-ranked 49k vocabulary"
    gen_s = time.perf_counter() - t0
    tokens = sum(len(r) for r in data)
    results: dict = {
        "source": source,
        "records": len(data),
        "tokens": tokens,
        "generation_s": round(gen_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "k": {},
    }
    for k in (5, 20):
        with_ids = to_records(data, k, ids_known=True, text_of=text_of)
        no_ids = to_records(data, k, ids_known=False, text_of=text_of)
        results["k"][str(k)] = {
            "provider_json_bytes_per_token": provider_json_bytes(no_ids) / tokens,
            "store_fp16_ids": measure(with_ids, "fp16", tokens),
            "store_q8_ids": measure(with_ids, "q8", tokens),
            "store_fp16_bytes_vocab": measure(no_ids, "fp16", tokens),
            "store_q8_bytes_vocab": measure(no_ids, "q8", tokens),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storage.json").write_text(json.dumps(results, indent=2))
    if not args.no_results_md:
        append_results_md(results)
    print(json.dumps(results, indent=2))
    return results


def append_results_md(res: dict) -> None:
    path = HERE / "RESULTS.md"
    if not path.is_file():
        path.write_text(
            "# Benchmark results\n\nRows are appended by the scripts in benchmarks/; "
            "numbers are measured on the machine named in each row's notes.\n\n"
            "| date | benchmark | setting | result | notes |\n|---|---|---|---|---|\n"
        )
    cells = []
    for k, r in res["k"].items():
        f, q = r["store_fp16_ids"], r["store_q8_ids"]
        fb, qb = r["store_fp16_bytes_vocab"], r["store_q8_bytes_vocab"]
        cells.append(
            f"K={k}: JSON {r['provider_json_bytes_per_token']:.0f} B/tok; store fp16 "
            f"{f['bytes_per_token']:.1f} (KL {f['kl_mean']:.1e}), q8 {q['bytes_per_token']:.1f} "
            f"(KL {q['kl_mean']:.1e}), of which token table {f['token_table_bytes_per_token']:.1f}; "
            f"API teacher (no ids) fp16 {fb['bytes_per_token']:.1f}, q8 {qb['bytes_per_token']:.1f}"
        )
    row = (
        f"| {res['date'][:10]} | storage.py | {res['tokens']} tokens, {res['records']} records; {res['source']} "
        f"| {'<br>'.join(cells)} | bytes = whole Parquet shards / generated tokens; KL(p‖q) = "
        f"mean per position over top-k+tail; token table amortizes with shard size; "
        f"{res['machine']} |\n"
    )
    with path.open("a", encoding="utf-8") as fh:
        fh.write(row)


if __name__ == "__main__":
    main(sys.argv[1:])
