"""CLI commands of this stage (wired in apidistill/cli/__init__.py).

``eval_cmd`` stays thin: the pipeline owns how a run file becomes records, endpoints and a run
folder (``apidistill.pipeline.run.eval_from_config``); this stage owns the measuring.
"""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import EvalError

REPORT_PATH = Path("report") / "report.html"


def eval_cmd(config: Path = typer.Argument(..., help="YAML run file.")) -> None:
    from apidistill.config import load_config

    cfg = load_config(config)
    from apidistill.pipeline.run import eval_from_config

    eval_from_config(cfg)


def report(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Print where the report is; opening it is the user's choice (it may be a server)."""
    path = run_dir / REPORT_PATH
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory", hint="give the run_dir of a run file")
    if not path.is_file():
        raise EvalError(
            f"{path}: no report in this run directory yet",
            hint="run `apidistill eval <config.yaml>` (or `apidistill run`) first",
        )
    typer.echo(str(path.resolve()))
