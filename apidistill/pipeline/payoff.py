"""The payoff row (issue #23 item 5): the distilled student's GGUF against the prompted
teacher, both through llama.cpp, on the run's held-out tickets.

Why after the run: the point of a migration is a student that is smaller, faster and cheaper
to serve than the prompted teacher. The eval stage compares their answers; this compares what
serving them costs on the engine users deploy a small model on. The student's q8_0 GGUF is
written under ``export/gguf/`` (the f16 file by apidistill with the ``gguf`` package, q8_0
from it by llama.cpp) and served by ``apidistill serve --backend llamacpp``; the teacher is
the base model's GGUF with the prototype prompt (system + shots) on every request, served the
same way with its prefix cache on (as a self-hosted teacher would run). Both get the same
tickets, greedy, ``harvest.max_tokens`` new tokens: latency per request at concurrency 1
(median), requests/s at concurrency 1 and 8, and the GGUF sizes. Requests: per arm one
warm-up, then ``requests`` one at a time and ``requests`` at concurrency 8.

llama-cpp-python has no CPU wheel on PyPI and builds llama.cpp from source, so the README's
first command does not install it; without it this stage says the one command that adds the
row instead of failing the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apidistill.config import RunConfig
    from apidistill.pipeline.layout import RunLayout

__all__ = [
    "BUILD_MINUTES",
    "INSTALL_COMMAND",
    "llamacpp_missing_message",
    "measure_arms",
    "payoff_stage",
    "render_payoff_md",
]

# Measured: `pip install llama-cpp-python==0.3.36` on this project's 2-core machine, shared
# with other jobs (2026-12-07, session 5): wall minutes of its CMake build of llama.cpp.
BUILD_MINUTES = 27.8
INSTALL_COMMAND = 'pip install "llama-cpp-python==0.3.36" && apidistill demo'
CONCURRENCY = 8


def llamacpp_available() -> bool:
    """Whether llama.cpp's Python bindings import here (no import of the library itself)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # sys.modules["llama_cpp"] = None, a broken install
        return False


def llamacpp_missing_message() -> str:
    """What to run to get the payoff row when llama-cpp-python is not installed."""
    return (
        "payoff row (student GGUF vs prompted teacher through llama.cpp) skipped: "
        "llama-cpp-python is not installed. It has no CPU wheel on PyPI and builds llama.cpp "
        f"from source ({BUILD_MINUTES} min on 2 cores, needs a C++ compiler and CMake). To add "
        f"the row, run: {INSTALL_COMMAND}   (the second demo run reuses the harvest, the "
        "training and the evaluation; it only exports the GGUF and measures)"
    )


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 1)


def measure_arms(
    arms: dict[str, tuple[Path, list[list[dict[str, str]]]]],
    *,
    max_tokens: int,
    threads: int | None = None,
    concurrency: int = CONCURRENCY,
) -> dict[str, Any]:
    """Serve every arm's GGUF with ``apidistill serve --backend llamacpp`` at once and
    measure each on its chats: the one-at-a-time requests alternate between the arms, so a
    change of load on a shared machine hits all alike; then requests/s at ``concurrency``."""
    from contextlib import ExitStack

    from apidistill.serve.engine import physical_cores
    from apidistill.serve.launcher import launch_server
    from apidistill.serve.measure import concurrent_rps, latency_summary, sequential

    threads = threads or physical_cores()
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                launch_server(str(gguf), backend="llamacpp", threads=threads,
                              served_model_name="m", startup_timeout=600)
            ).base_url
            for name, (gguf, _) in arms.items()
        }  # fmt: skip
        for name, (_, chats) in arms.items():  # warm-up: first-call allocations, prefix cache
            sequential(urls[name], "m", chats[-1:], 4)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
        walls = dict.fromkeys(arms, 0.0)
        n = min(len(chats) for _, chats in arms.values())
        for i in range(n):
            for name, (_, chats) in arms.items():
                got, wall = sequential(urls[name], "m", chats[i : i + 1], max_tokens)
                rows[name] += got
                walls[name] += wall
        out: dict[str, Any] = {}
        for name, (gguf, chats) in arms.items():
            out[name] = {
                "gguf": str(gguf),
                "gguf_mb": _mb(gguf),
                **latency_summary(rows[name]),
                "requests_per_s_c1": round(n / walls[name], 3),
                f"requests_per_s_c{concurrency}": concurrent_rps(
                    urls[name], "m", chats[:n], max_tokens, concurrency
                )["requests_per_s"],
                "answers": [r["text"] for r in rows[name]],
            }
    return out


def payoff_stage(
    cfg: RunConfig,
    layout: RunLayout,
    student_dir: str,
    *,
    console: Any = None,
    requests: int | None = None,
) -> dict[str, Any]:
    """Export the student's q8_0 GGUF and measure it against the prompted teacher (module
    docstring). Returns the numbers (also ``report/payoff.{json,md}``); without llama.cpp
    ``{"skipped": reason, "command": ...}`` and the reason printed."""
    say = console.print if console is not None else print
    if not llamacpp_available():
        msg = llamacpp_missing_message()
        say(msg)
        return {"skipped": msg, "command": INSTALL_COMMAND, "build_minutes": BUILD_MINUTES}
    from apidistill.data.store import load_records
    from apidistill.export.gguf import base_gguf_path, export_ggufs
    from apidistill.pipeline.template import load_template

    teacher_model = cfg.teacher.launch.model if cfg.teacher.launch else None
    if teacher_model is None:
        msg = "payoff row skipped: the teacher is not self-hosted (teacher.launch)"
        say(msg)
        return {"skipped": msg}
    n = requests or cfg.export.payoff_requests
    exp = cfg.export
    name = exp.name or cfg.name
    student_gguf = export_ggufs(
        student_dir,
        layout.export / "gguf",
        ["q8_0"],
        base_model=cfg.student.model,
        base_gguf=exp.base_gguf,
        name=name,
        keep_f16=True,
    )["q8_0"]
    teacher_gguf = base_gguf_path(teacher_model)
    test = load_records(layout.dataset, split=cfg.eval.split)[:n]
    if not test:
        msg = f"payoff row skipped: the dataset has no '{cfg.eval.split}' split"
        say(msg)
        return {"skipped": msg}
    p = cfg.prompts
    tpl = load_template(cfg.resolve_path(p.template) if p.template else None)
    system = cfg.student.system_prompt  # as eval sends it (the GGUF's template bakes it too)
    student_chats = [
        ([{"role": "system", "content": system}] if system else [])
        + [m.model_dump() for m in r.messages]
        for r in test
    ]
    teacher_chats = [[m.model_dump() for m in tpl.render(list(r.messages))] for r in test]
    arms = {"student": (student_gguf, student_chats), "teacher": (teacher_gguf, teacher_chats)}
    threads = cfg.teacher.launch.threads if cfg.teacher.launch else None
    numbers = measure_arms(arms, max_tokens=cfg.harvest.max_tokens, threads=threads)
    s, t = numbers["student"], numbers["teacher"]
    numbers["requests_per_arm"] = 1 + 2 * len(test)
    numbers["tickets"] = len(test)
    numbers["max_tokens"] = cfg.harvest.max_tokens
    numbers["load_avg"] = list(os.getloadavg())
    numbers["ratios"] = {
        "teacher_vs_student_latency": round(t["latency_s_median"] / s["latency_s_median"], 2),
        "student_vs_teacher_rps_c1": round(s["requests_per_s_c1"] / t["requests_per_s_c1"], 2),
        f"student_vs_teacher_rps_c{CONCURRENCY}": round(
            s[f"requests_per_s_c{CONCURRENCY}"] / t[f"requests_per_s_c{CONCURRENCY}"], 2
        ),
        "student_vs_teacher_gguf_size": round(s["gguf_mb"] / t["gguf_mb"], 2),
    }
    numbers["student_answers_equal_teacher"] = sum(
        a == b for a, b in zip(s["answers"], t["answers"], strict=True)
    )
    layout.report.mkdir(parents=True, exist_ok=True)
    (layout.report / "payoff.json").write_text(json.dumps(numbers, indent=2), encoding="utf-8")
    md = render_payoff_md(numbers)
    (layout.report / "payoff.md").write_text(md, encoding="utf-8")
    say(md)
    return {k: v for k, v in numbers.items() if k not in ("student", "teacher")} | {
        arm: {k: v for k, v in numbers[arm].items() if k != "answers"}
        for arm in ("student", "teacher")
    }


def render_payoff_md(p: dict[str, Any]) -> str:
    """The payoff rows as a markdown table, student next to teacher."""
    s, t, r = p["student"], p["teacher"], p["ratios"]
    c = f"c{CONCURRENCY}"
    rows = [
        "| through llama.cpp (apidistill serve --backend llamacpp) | prompted teacher | "
        "distilled student | student vs teacher |",
        "|---|---|---|---|",
        f"| GGUF size (MB) | {t['gguf_mb']} | {s['gguf_mb']} | "
        f"{r['student_vs_teacher_gguf_size']}× the teacher's |",
        f"| s / request, concurrency 1 (median) | {t['latency_s_median']} | "
        f"{s['latency_s_median']} | {r['teacher_vs_student_latency']}× as fast |",
        f"| requests/s, concurrency 1 | {t['requests_per_s_c1']} | {s['requests_per_s_c1']} | "
        f"{r['student_vs_teacher_rps_c1']}× the teacher's |",
        f"| requests/s, concurrency {CONCURRENCY} | {t[f'requests_per_s_{c}']} | "
        f"{s[f'requests_per_s_{c}']} | {r[f'student_vs_teacher_rps_{c}']}× the teacher's |",
        f"| output tokens / request (median) | {t['output_tokens_median']} | "
        f"{s['output_tokens_median']} | |",
    ]
    load = ", ".join(f"{x:.2f}" for x in p["load_avg"])
    return (
        "\n".join(rows) + f"\n\n{p['tickets']} held-out tickets per arm ({p['requests_per_arm']} "
        f"requests each: 1 warm-up, {p['tickets']} one at a time, {p['tickets']} at concurrency "
        f"{CONCURRENCY}), greedy, {p['max_tokens']} new tokens at most; teacher = base GGUF + "
        f"the prototype prompt, prefix cache on; student = its q8_0 GGUF; load average {load}.\n"
    )
