"""The pipeline's export stage follows the run file's ``export:`` section: by default only
the adapter export in ``<run>/student`` (today's behaviour); other formats beside it."""

from __future__ import annotations

from apidistill.config import load_config
from apidistill.data.store import save_records
from apidistill.pipeline.run import export_stage
from apidistill.pipeline.stages import RunContext
from apidistill.records import Record

RUN = """\
name: t
run_dir: {run_dir}
teacher: {{provider: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: tiny}}
prompts: {{path: prompts.jsonl}}
policy: {{use: internal}}
budget: {{usd: 0}}
student: {{model: smollm2-135m-instruct}}
"""


def _ctx(tmp_path, extra: str = "") -> RunContext:
    f = tmp_path / "run.yaml"
    f.write_text(RUN.format(run_dir=tmp_path / "run") + extra)
    ctx = RunContext.from_config(load_config(f), progress=False)
    recs = [Record(id="r1", prompt="ticket", completion="order_id: 1", split="train")]
    save_records(recs, ctx.layout.dataset, by_split=True)
    return ctx


def test_default_writes_only_the_student_folder(tiny_smol_dir, tmp_path):
    ctx = _ctx(tmp_path)
    path = export_stage(ctx, tiny_smol_dir)
    assert path == str(ctx.layout.student)
    assert (ctx.layout.student / "README.md").is_file()
    assert not ctx.layout.export.exists()


def test_other_formats_go_beside_the_student(tiny_smol_dir, tmp_path):
    ctx = _ctx(tmp_path, "export: {formats: [adapter, vllm, gguf], gguf_quants: [f16]}\n")
    path = export_stage(ctx, tiny_smol_dir)
    assert path == str(ctx.layout.student)
    assert (ctx.layout.export / "vllm" / "serve_vllm.sh").is_file()
    assert (ctx.layout.export / "gguf" / "t-f16.gguf").is_file()  # named after the run
    assert "Teacher terms" in (ctx.layout.export / "gguf" / "README.md").read_text()
    assert not (ctx.layout.export / "adapter").exists()  # the adapter is the student folder
