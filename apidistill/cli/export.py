"""``apidistill export``: write a trained student in the formats users deploy.

With a run file (``--config``) the student is the run's training output, the folder the
run's ``export/`` and the formats, quantizations and name the file's ``export:`` section
(flags given here win); the model cards list the teachers' terms read from the run's dataset,
re-checked for the run's intended use. Without a run file, give the student folder (a
training output, an adapter or a merged export) and ``--out``. One line per written format
goes to stdout (``export: FORMAT → FOLDER``). Heavy imports stay inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from apidistill.errors import ConfigError

_FORMATS_HELP = "adapter, merged, gguf, ollama, vllm"


def _split(values: list[str] | None) -> list[str] | None:
    """``--format gguf,ollama`` and ``--format gguf --format ollama`` alike."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def export(
    student: Path | None = typer.Argument(
        None,
        help="Training output, adapter or merged student folder (default with --config: the "
        "run's training output).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Run file: export its student with its 'export:' settings."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder to write into (default with --config: the run's export/)."
    ),
    formats: list[str] | None = typer.Option(
        None,
        "--format",
        help=f"Formats to write, repeated or comma-separated: {_FORMATS_HELP} (default: the "
        "run file's export.formats with --config, else all).",
    ),
    quants: list[str] | None = typer.Option(
        None, "--quant", help="GGUF files to write: f16, q8_0, q4_k_m (repeated or commas)."
    ),
    ollama_quant: str | None = typer.Option(
        None, "--ollama-quant", help="Which GGUF the Ollama Modelfile names (default q8_0)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="The student's name in cards, commands and file names."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="The student's base model when its folder does not record it."
    ),
    base_gguf: Path | None = typer.Option(
        None, "--base-gguf", help="GGUF of the base model to copy tokenizer metadata from."
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Training dataset folder whose terms the model cards list."
    ),
) -> None:
    """Export a trained student: adapter, merged safetensors, GGUF, Ollama, vLLM."""
    from apidistill.config import ExportConfig

    exp = ExportConfig()
    use = policy_cfg = None
    if config is not None:
        from apidistill.config import load_config
        from apidistill.pipeline.layout import RunLayout

        cfg = load_config(config)
        layout = RunLayout(cfg.run_path)
        exp = cfg.export
        student = student or layout.train
        out = out or layout.export
        dataset = dataset or layout.dataset
        base_model = base_model or cfg.student.model
        name = name or exp.name or cfg.name
        use, policy_cfg = cfg.policy.use, cfg.policy
    if student is None or out is None:
        raise ConfigError(
            "export needs the student folder and --out (or a run file with --config)",
            hint="apidistill export runs/NAME/train --out exported --format gguf",
        )
    from apidistill.export.formats import EXPORT_FORMATS, export_formats

    written = export_formats(
        student,
        out,
        _split(formats) or (exp.formats if config is not None else list(EXPORT_FORMATS)),
        gguf_quants=_split(quants) or exp.gguf_quants,
        ollama_quant=ollama_quant or exp.ollama_quant,
        base_model=base_model,
        base_gguf=base_gguf or exp.base_gguf,
        name=name,
        dataset=dataset,
        intended_use=use,
        policy_cfg=policy_cfg,
    )
    for fmt, folder in written.items():
        typer.echo(f"export: {fmt} → {folder}")
