"""``apidistill policy check | list | validate`` (wired in apidistill/cli/__init__.py).

``check`` exits 0 when the terms allow the use and 1 when they do not (deny, authorization
needed, unknown), so scripts and CI can gate on it; bad arguments exit 2 through the CLI's
error handler.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from apidistill.policy.engine import decide
from apidistill.policy.loader import builtin_policy_dir, load_policies, validate_dirs
from apidistill.policy.obligations import NOT_LEGAL_ADVICE, obligation_lines
from apidistill.policy.schema import USES, Decision

policy_app = typer.Typer(no_args_is_help=True)

_STYLE = {
    "allow": "bold green",
    "allow_with_obligations": "bold yellow",
    "requires_authorization": "bold magenta",
    "deny": "bold red",
    "unknown": "bold red",
}
_SHORT = {
    "allow": "allow",
    "allow_with_obligations": "oblig.",
    "requires_authorization": "auth.",
    "deny": "DENY",
    "unknown": "?",
}


def _print_decision(console: Console, d: Decision) -> None:
    console.print(
        f"[{_STYLE[d.decision]}]{d.decision}[/]  {d.provider} / {d.model}  "
        f"(channel {d.channel or '—'}, use {d.use})",
        highlight=False,
    )
    console.print(f"  document: {d.citation()}", highlight=False)
    if d.source_url:
        console.print(f"  source:   {d.source_url}", highlight=False)
    if d.checked_on:
        console.print(f"  checked:  {d.checked_on.isoformat()}", highlight=False)
    if d.policy_file:
        # a built-in policy is recorded by its name in the package; the terminal shows the
        # file this process actually read (which install it came from)
        shown = d.policy_file
        if not d.user_policy and shown.startswith("apidistill/policies/"):
            shown = str(builtin_policy_dir() / Path(shown).name)
        console.print(f"  policy:   {d.policy_id} ({shown}:{d.policy_line})", highlight=False)
    console.print(f"  reason:   {d.reason}", highlight=False)
    lines = obligation_lines(d.obligations)
    if lines and d.decision not in ("deny", "unknown"):
        console.print("  obligations:")
        for line in lines:
            console.print(f"    - {line}", highlight=False)
    if d.decision == "requires_authorization":
        console.print(
            "  → allowed only with a recorded policy.authorization_reference", highlight=False
        )
    elif d.decision == "unknown":
        console.print(
            "  → needs policy.acknowledge_unknown (who checked and why) or a policy file",
            highlight=False,
        )
    console.print(f"[dim]{NOT_LEGAL_ADVICE}[/]")


@policy_app.command("check")
def check(
    teacher: str = typer.Option(
        ...,
        help="Provider: openai, anthropic, google, meta, mistral, deepseek, xai, qwen, "
        "cohere, or self_hosted for weights you serve.",
    ),
    model: str = typer.Option(..., help="Exact model or checkpoint name."),
    use: str = typer.Option(..., help=f"Intended use: {', '.join(USES)}."),
    channel: str | None = typer.Option(
        None, help="api, weights or app (default: whichever policy names the model most exactly)."
    ),
    policy_dir: list[Path] = typer.Option(
        [], "--policy-dir", help="Extra policy folder (your agreements); wins over built-ins."
    ),
    license: str | None = typer.Option(
        None, "--license", help="Declared weights license for a self-hosted checkpoint."
    ),
) -> None:
    """Decide whether a teacher/model may be distilled for a use (exit 0 allowed, 1 not)."""
    d = decide(teacher, model, use, channel=channel, extra_dirs=policy_dir, license=license)
    _print_decision(Console(), d)
    if not d.permits:
        raise typer.Exit(1)


@policy_app.command("list")
def list_policies(
    policy_dir: list[Path] = typer.Option(
        [], "--policy-dir", help="Extra policy folders to list with the built-in library."
    ),
) -> None:
    """List every policy: provider, channel, document, date and the decision per use."""
    policies = load_policies(policy_dir, user=True) + load_policies([builtin_policy_dir()])
    table = Table(title="Teacher terms (engineering help, not legal advice)")
    for col in ("id", "provider", "channel", "document", "effective", *USES):
        table.add_column(col, overflow="fold")
    for p in policies:
        cells = []
        for use in USES:
            rule = p.rules.get(use)  # type: ignore[call-overload]
            cells.append(f"[{_STYLE[rule.decision]}]{_SHORT[rule.decision]}[/]" if rule else "—")
        table.add_row(
            p.id + (" (user)" if p.user else ""),
            p.provider,
            p.channel,
            p.document,
            p.effective_date.isoformat() if p.effective_date else "—",
            *cells,
        )
    Console().print(table)


@policy_app.command("validate")
def validate(
    dirs: list[Path] = typer.Argument(None, help="Policy folders or files (default: built-in)."),
) -> None:
    """Check policy files; each problem is printed with its file and line (exit 1 if any)."""
    folders = dirs or [builtin_policy_dir()]
    policies, problems = validate_dirs(folders)
    console = Console()
    for problem in problems:
        console.print(f"[bold red]error:[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    files = {p.file for p in policies}
    console.print(f"[green]ok[/]: {len(policies)} policies in {len(files)} files", highlight=False)
