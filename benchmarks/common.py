"""What every benchmark shares: where results go, the machine they ran on, and summaries.

Why one module: RESULTS.md is regenerated from the JSON files, so every script must write
the same envelope (benchmark name, mode, date, machine, versions, seeds) and the same
min/median/max shape; a number without its machine and versions cannot be compared.

Results go to ``benchmarks/out/`` unless ``APIDISTILL_BENCH_OUT`` names another folder
(the tests point it at a temporary one so a CI run never overwrites real results).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "HERE",
    "PEERS_PYTHON",
    "ROOT",
    "cpu_seconds",
    "fmt",
    "load_result",
    "machine_info",
    "md_table",
    "out_dir",
    "peak_rss_mb",
    "peer_versions",
    "peers_python",
    "spread",
    "versions",
    "write_result",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_PYTHON = Path(os.environ.get("APIDISTILL_PEERS_PYTHON", "/work/peers-venv/bin/python"))
PEER_PACKAGES = ("bespokelabs-curator", "distilabel", "openai", "httpx", "aiohttp", "litellm")
MAIN_PACKAGES = (
    "apidistill",
    "torch",
    "transformers",
    "peft",
    "trl",
    "openai",
    "httpx2",
    "aiohttp",
    "datasets",
    "pyarrow",
)


def out_dir() -> Path:
    """Folder for JSON results (created on first use)."""
    path = Path(os.environ.get("APIDISTILL_BENCH_OUT") or HERE / "out")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python, and the load average when the numbers were taken.

    The load average is recorded because this machine is shared: a load far above the core
    count means absolute times are inflated, and only ratios measured in the same run count.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "gpu": None,
    }


def versions(packages: Iterable[str] = MAIN_PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` = not installed) of the packages a number depends on."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def peers_python() -> Path | None:
    """The interpreter of the separate peers venv, or ``None`` when it is not set up."""
    return PEERS_PYTHON if PEERS_PYTHON.is_file() else None


def peer_versions() -> dict[str, str | None]:
    """Versions inside the peers venv (asked of its own interpreter, never imported here)."""
    py = peers_python()
    if py is None:
        return {}
    code = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n try: return m.version(n)\n except m.PackageNotFoundError: return None\n"
        f"print(json.dumps({{n: v(n) for n in {list(PEER_PACKAGES)!r}}}))"
    )
    try:
        done = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


# --------------------------------------------------------------------------- process


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (user + system), in seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- numbers


def spread(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """``{"min", "median", "max", "n", "values"}`` of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"min": None, "median": None, "max": None, "n": 0, "values": []}
    return {
        "min": round(min(vals), digits),
        "median": round(statistics.median(vals), digits),
        "max": round(max(vals), digits),
        "n": len(vals),
        "values": [round(v, digits) for v in vals],
    }


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; ``None`` becomes an em dash."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; pipes inside cells are escaped."""

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- JSON


def write_result(
    name: str,
    payload: dict[str, Any],
    *,
    mode: str,
    seeds: Sequence[int] = (),
    started: float | None = None,
    extra_versions: dict[str, str | None] | None = None,
) -> Path:
    """Write ``out/<name>.json`` with the common envelope around ``payload``."""
    doc = {
        "benchmark": name,
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - started, 1) if started is not None else None,
        "machine": machine_info(),
        "versions": versions(),
        "peer_versions": extra_versions or {},
        "seeds": list(seeds),
        "argv": sys.argv[1:],
        **payload,
    }
    path = out_dir() / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return path


def load_result(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """``out/<name>.json`` as a dict, or ``None`` when missing or unreadable."""
    path = (folder or out_dir()) / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
