"""Measure the demo task: the prompted teacher vs. the bare base model, exact match on gold.

Two arms on the same tickets, both greedy, both SmolLM2-135M-Instruct on CPU:
- ``teacher``: the prototype prompt (system + 16 shots, ~1.5k tokens) before each ticket;
- ``base``: only the student's one-line instruction (what the student starts from).

The teacher's prompt prefix is identical for every ticket, so it is encoded once and its KV
cache is copied into each batch; the tickets are padded *between* prefix and ticket (masked,
with explicit positions), so every row sees exactly the token positions it would see alone.
``--check N`` compares the first N answers with plain unbatched ``model.generate``.

Run: ``python examples/demo/measure_teacher.py --n 100`` (writes a JSON summary with --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task

from apidistill.model_loading import load_model, load_tokenizer

MODEL = "smollm2-135m-instruct"
SENTINEL = "\x00TICKET\x00"


def _ids(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def split_prefix(tok: Any, render: Any, tickets: list[str]) -> tuple[list[int], list[list[int]]]:
    """Shared prompt-prefix ids and each ticket's remaining ids.

    The prefix is the rendered text before the ticket; each full rendering is tokenized whole
    and must start with the prefix ids, so the split never changes the tokens a row sees.
    """
    text = tok.apply_chat_template(render(SENTINEL), add_generation_prompt=True, tokenize=False)
    prefix = tok(text.split(SENTINEL)[0], add_special_tokens=False)["input_ids"]
    suffixes = []
    for t in tickets:
        full = _ids(tok, render(t))
        if full[: len(prefix)] != prefix:
            raise RuntimeError("prompt prefix does not tokenize the same inside the full prompt")
        suffixes.append(full[len(prefix) :])
    return prefix, suffixes


@torch.inference_mode()
def greedy_batch(
    model: Any,
    prefix_cache: Any,
    prefix_len: int,
    suffixes: list[list[int]],
    stop_id: int,
    pad_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of prefix + each suffix, stopping at ``stop_id`` per row."""
    b, width = len(suffixes), max(map(len, suffixes))
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    pos = torch.full((b, width), prefix_len, dtype=torch.long)
    for r, s in enumerate(suffixes):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, prefix_len + width - len(s) :] = 1
        pos[r, width - len(s) :] = torch.arange(prefix_len, prefix_len + len(s))
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(b)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(b, dtype=torch.bool)
    gen: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        for r in range(b):
            if not done[r]:
                gen[r].append(int(nxt[r]))
        done |= nxt == stop_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=out.past_key_values,
        )
        next_pos = next_pos + 1
    return [g[:-1] if g and g[-1] == stop_id else g for g in gen]


def run_arm(
    model: Any, tok: Any, render: Any, tickets: list[str], batch_size: int, max_new_tokens: int
) -> tuple[list[str], float, int]:
    """(answers, seconds spent generating incl. the prefix pass, prefix length in tokens)."""
    prefix, suffixes = split_prefix(tok, render, tickets)
    stop_id = tok.convert_tokens_to_ids("<|im_end|>")
    t0 = time.perf_counter()
    with torch.inference_mode():
        cache = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))  # less padding
    answers: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        gen = greedy_batch(
            model,
            cache,
            len(prefix),
            [suffixes[r] for r in rows],
            stop_id,
            tok.pad_token_id,
            max_new_tokens,
        )
        answers.update(
            (r, tok.decode(g, skip_special_tokens=True)) for r, g in zip(rows, gen, strict=True)
        )
        print(f"  {len(answers)}/{len(tickets)}  {time.perf_counter() - t0:.0f}s", flush=True)
    return [answers[i] for i in range(len(tickets))], time.perf_counter() - t0, len(prefix)


@torch.inference_mode()
def check_unbatched(model: Any, tok: Any, render: Any, tickets: list[str], answers: list[str]):
    """Plain ``generate`` one by one must give the same answers as the batched, cached path."""
    stop_id = tok.convert_tokens_to_ids("<|im_end|>")
    for t, a in zip(tickets, answers, strict=True):
        ids = torch.tensor([_ids(tok, render(t))])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=stop_id,
            pad_token_id=tok.pad_token_id,
        )
        ref = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        print(f"  check {'same' if ref == a else 'DIFFERENT'}: {ref!r} vs {a!r}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", type=Path, default=task.DATA / "tickets.jsonl")
    ap.add_argument("--prompt", type=Path, default=task.DATA / "prototype_prompt.yaml")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--arms", default="teacher,base")
    ap.add_argument("--check", type=int, default=0, help="verify N answers unbatched")
    ap.add_argument("--out", type=Path, help="write a JSON summary + answers here")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(0)  # greedy decoding: nothing is sampled; set for completeness
    rows = [json.loads(line) for line in args.tickets.read_text(encoding="utf-8").splitlines()]
    rows = rows[args.offset : args.offset + args.n]
    texts = [r["text"] for r in rows]
    prompt, instruction = task.load_prompt(args.prompt), task.student_instruction()
    renders = {
        "teacher": lambda t: task.teacher_messages(t, prompt),
        "base": lambda t: task.student_messages(t, instruction),
    }
    t0 = time.perf_counter()
    tok, model = load_tokenizer(MODEL), load_model(MODEL)
    print(f"model loaded in {time.perf_counter() - t0:.1f}s")

    summary: dict[str, Any] = {"n": len(rows), "offset": args.offset, "arms": {}}
    for arm in args.arms.split(","):
        print(f"{arm}:")
        answers, secs, plen = run_arm(
            model, tok, renders[arm], texts, args.batch_size, args.max_new_tokens
        )
        ok = [task.score(a, r["gold"]) for a, r in zip(answers, rows, strict=True)]
        by = {
            key: {
                v: round(sum(o for o, r in zip(ok, rows, strict=True) if r[key] == v) / c, 3)
                for v, c in sorted(Counter(r[key] for r in rows).items())
            }
            for key in ("label", "tone", "order_format")
        }
        res = {
            "exact": round(sum(ok) / len(ok), 3),
            "correct": sum(ok),
            "prefix_tokens": plen,
            "seconds": round(secs, 1),
            "s_per_request": round(secs / len(ok), 3),
            "by": by,
            "answers": [
                {"id": r["id"], "ok": o, "answer": a, "gold": r["gold"]}
                for r, a, o in zip(rows, answers, ok, strict=True)
            ],
        }
        summary["arms"][arm] = res
        print(f"{arm}: exact {res['exact']} ({sum(ok)}/{len(ok)}), {res['s_per_request']} s/req")
        print(f"  by: {json.dumps(by)}")
        for item in [x for x in res["answers"] if not x["ok"]][:12]:
            print(f"  miss {item['id']}: {item['answer']!r} (gold {item['gold']!r})")
        if args.check:
            check_unbatched(model, tok, renders[arm], texts[: args.check], answers[: args.check])
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
