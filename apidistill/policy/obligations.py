"""The terms section of dataset and model cards, built from recorded decisions.

Obligations only help if they reach the people who publish the student, so they are rendered
as concrete instructions (the name must start with X, show line Y) next to the citation that
imposes them, followed by the not-legal-advice line.
"""

from __future__ import annotations

from collections.abc import Sequence

from apidistill.policy.schema import Decision, Obligations

__all__ = ["NOT_LEGAL_ADVICE", "obligation_lines", "render_obligations_md"]

NOT_LEGAL_ADVICE = (
    "apidistill's policy decisions are engineering help, not legal advice: read the cited "
    "documents and ask your counsel before relying on them."
)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def obligation_lines(ob: Obligations) -> list[str]:
    """Each obligation as one imperative sentence."""
    lines = []
    if ob.name_prefix:
        lines.append(f'The student\'s name must begin with "{ob.name_prefix}".')
    if ob.attribution_text:
        lines.append(f'Display "{ob.attribution_text}" where the student is offered or described.')
    if ob.license_passthrough:
        lines.append("Ship a copy of the source license/terms with the student and the dataset.")
    if ob.noncommercial:
        lines.append("Non-commercial use only.")
    if ob.mau_threshold:
        lines.append(
            f"Above {ob.mau_threshold:,} monthly active users a separate license is required."
        )
    lines.extend(ob.notes)
    return lines


def _name_check(ob: Obligations, student_name: str | None) -> list[str]:
    """A line saying the student's current name breaks its required prefix, if it does."""
    prefix = ob.name_prefix
    if not prefix or student_name is None or student_name.startswith(prefix):
        return []
    return [
        f'This export is named "{student_name}", which does not begin with "{prefix}": '
        "rename it before distributing it or making it available."
    ]


def render_obligations_md(
    decisions: Sequence[Decision],
    *,
    student_name: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Markdown section listing every teacher's decision, citation and obligations.

    ``student_name`` (a model card) adds a line where that name lacks a required prefix;
    ``notes`` are paragraphs put before the not-legal-advice line (e.g. where the decisions
    were read from).
    """
    out = ["## Teacher terms and obligations", ""]
    if not decisions:
        out += ["No teacher policy decision was recorded.", ""]
        for note in notes:
            out += [note, ""]
        out += [f"> {NOT_LEGAL_ADVICE}", ""]
        return "\n".join(out)
    out += [
        "| teacher | model | channel | use | decision | document | clause | decision id |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in decisions:
        doc = d.document or "—"
        if d.effective_date:
            doc += f" ({d.effective_date.isoformat()})"
        if d.source_url:
            doc = f"[{doc}]({d.source_url})"
        verdict = d.decision + (f" — {d.overridden_by}" if d.overridden_by else "")
        out.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    d.provider,
                    d.model,
                    d.channel or "—",
                    d.use,
                    verdict,
                    doc,
                    d.clause or "—",
                    d.id,
                )
            )
            + " |"
        )
    out.append("")
    for d in decisions:
        lines = obligation_lines(d.obligations)
        if d.obligations.name_prefix:
            lines[1:1] = _name_check(d.obligations, student_name)
        if d.overridden_by:
            when = f" on {d.overridden_at:%Y-%m-%d %H:%M UTC}" if d.overridden_at else ""
            lines.insert(
                0, f"Went ahead despite '{d.decision}' because of {d.overridden_by}{when}."
            )
        if not lines:
            continue
        source = d.citation() if d.document else d.provider
        out += [f"### Obligations under {source} (teacher {d.model}, use {d.use})", ""]
        out += [f"- {line}" for line in lines]
        out.append("")
    for note in notes:
        out += [note, ""]
    out += [f"> {NOT_LEGAL_ADVICE}", ""]
    return "\n".join(out)
