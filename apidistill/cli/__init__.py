"""The ``apidistill`` command line: one typer app, one sub-module of commands per stage.

The CLI is its own layer above the stages: each command group has its own module in this
package (``cli/<group>.py``) and no stage package imports the CLI. This file only wires the
groups so that ``apidistill --help`` lists the whole flow. Heavy libraries (torch, transformers) are imported
inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from apidistill import exit_codes
from apidistill.cli.batch import batch_app
from apidistill.cli.data import data_app
from apidistill.cli.estimate import estimate
from apidistill.cli.eval import eval_cmd, report
from apidistill.cli.export import export
from apidistill.cli.harvest import harvest, journal_app
from apidistill.cli.import_ import import_cmd
from apidistill.cli.policy import policy_app
from apidistill.cli.proxy import proxy_app
from apidistill.cli.run import bench, demo, run
from apidistill.cli.serve import serve
from apidistill.cli.synth import synth
from apidistill.cli.train import train
from apidistill.errors import ApidistillError, BudgetExceeded, redact

app = typer.Typer(
    name="apidistill",
    help="Distill a prompted API teacher into a small self-hosted student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command(
    "run", help="Run every stage of a YAML run file: policy → harvest → data → train → eval."
)(run)
app.command("demo", help="Offline demo: migrate a prototype prompt to a self-hosted student.")(demo)
app.command(
    "harvest", help="Pull teacher completions (and logprobs) for the prompts of a run file."
)(harvest)
app.add_typer(
    journal_app, name="journal", help="Repair a run's harvest journal (salvage a damaged one)."
)
app.command(
    "estimate", help="Pre-flight cost, token and time estimate for a run file; sends nothing."
)(estimate)
app.add_typer(batch_app, name="batch", help="List, poll or cancel a run's provider batches.")
app.command(
    "import",
    help="Import existing answers (fine-tuning file, stored completions, Batch output, "
    "proxy captures, chat JSONL) into a dataset with provenance and a terms decision.",
)(import_cmd)
app.add_typer(policy_app, name="policy", help="Check a teacher's terms for an intended use.")
app.command("synth", help="Write new task inputs with a teacher (the run file's synth:).")(synth)
app.add_typer(data_app, name="data", help="Inspect, filter, balance and split harvested datasets.")
app.command("train", help="Distill the dataset of a run file into the student (LoRA or full).")(
    train
)
app.command("eval", help="Evaluate student vs teacher on the held-out split; write the report.")(
    eval_cmd
)
app.command("report", help="Print the path of a run's HTML report.")(report)
app.command(
    "export", help="Export a trained student: adapter, merged, GGUF, Ollama Modelfile, vLLM."
)(export)
app.command("serve", help="Serve a model behind OpenAI- and Anthropic-compatible endpoints.")(serve)
app.add_typer(
    proxy_app,
    name="proxy",
    help="Forward OpenAI/Anthropic calls to the teacher and capture them for training; "
    "promote/rollback change its split share.",
)
app.command("bench", help="Run the benchmark suite (benchmarks/), writing JSON and RESULTS.md.")(
    bench
)


def main() -> None:
    """Entry point: apidistill errors print as one readable message, not a traceback."""
    try:
        # standalone_mode=False: click would turn Ctrl-C into "Aborted!" and exit 1 itself,
        # hiding that everything finished so far is saved and how to resume.
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except typer.TyperException as exc:  # usage errors: click's own message and exit code
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        sys.exit(getattr(exc, "exit_code", 2))
    except BudgetExceeded as exc:  # not a failure of the command: the cap did its job
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"[bold yellow]budget stop:[/] {exc}", highlight=False
        )
        sys.exit(exit_codes.BUDGET_STOP)
    except ApidistillError as exc:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exit_codes.ERROR)
    except OSError as exc:  # disk full, read-only folder: the message names the file
        from rich.console import Console

        Console(stderr=True).print(
            f"[bold red]error:[/] {redact(str(exc))}\n  → check free disk space and that the "
            "folder is writable; everything finished so far is saved, re-run to resume",
            highlight=False,
        )
        sys.exit(exit_codes.ERROR)
    if code == 130:  # typer's answer to Ctrl-C when it does not exit by itself
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> NoReturn:
    from rich.console import Console

    Console(stderr=True).print(
        "[yellow]interrupted[/]: everything finished so far is saved; re-run to resume."
    )
    sys.exit(exit_codes.INTERRUPTED)


if __name__ == "__main__":
    main()
