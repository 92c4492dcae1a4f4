"""The run file's ``export:`` section and ``apidistill export``'s argument errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from apidistill.cli import app
from apidistill.config import ExportConfig, load_config
from apidistill.errors import ConfigError, ExportError
from apidistill.export.formats import check_formats

RUN = """\
name: t
teacher: {provider: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: tiny}
prompts: {path: prompts.jsonl}
policy: {use: internal}
budget: {usd: 0}
"""


def test_default_keeps_todays_adapter_export():
    cfg = ExportConfig()
    assert cfg.formats == ["adapter"] and cfg.ollama_quant == "q8_0"
    assert cfg.gguf_quants == ["f16", "q8_0", "q4_k_m"]


def test_the_section_is_read_from_the_run_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(RUN + "export: {formats: [adapter, gguf, ollama], gguf_quants: [q8_0]}\n")
    cfg = load_config(f)
    assert cfg.export.formats == ["adapter", "gguf", "ollama"]
    assert cfg.export.gguf_quants == ["q8_0"]


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("export: {formats: [zip]}", ["export.formats", "zip"]),
        ("export: {gguf_quants: [q3_k]}", ["export.gguf_quants", "q3_k"]),
        ("export: {formats: [gguf, gguf]}", ["export.formats", "listed twice"]),
        ("export: {formats: []}", ["export.formats"]),
        ("export: {format: [gguf]}", ["export.format"]),
    ],
)
def test_bad_sections_name_the_field(tmp_path, section, words):
    f = tmp_path / "run.yaml"
    f.write_text(RUN + section + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    for w in words:
        assert w in str(err.value)


def test_check_formats_lists_the_accepted_names():
    with pytest.raises(ExportError, match="'zip'") as err:
        check_formats(["gguf", "zip"], ["q8_0"])
    assert "adapter, merged, gguf, ollama, vllm" in str(err.value)
    with pytest.raises(ExportError, match="'q2'"):
        check_formats(["gguf"], ["q2"])


def test_cli_without_a_student_says_what_to_give():
    result = CliRunner().invoke(app, ["export"])
    assert result.exit_code != 0
    assert "--out" in result.output or "--out" in str(result.exception)


def test_cli_unknown_format_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["export", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "gguf,zip"]
    )
    assert result.exit_code != 0
    assert "zip" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_cli_exports_a_merged_student_to_gguf_and_ollama(tiny_smol_dir, tmp_path):
    out = tmp_path / "o"
    args = ["export", str(tiny_smol_dir), "--out", str(out), "--name", "tiny"]
    result = CliRunner().invoke(app, [*args, "--format", "gguf,ollama", "--quant", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "export: gguf" in result.output and "export: ollama" in result.output
    assert sorted(p.name for p in (out / "gguf").iterdir()) == ["README.md", "tiny-q8_0.gguf"]
    assert (out / "ollama" / "Modelfile").read_text().startswith("FROM ./tiny-q8_0.gguf\n")
    assert (out / "ollama" / "tiny-q8_0.gguf").stat().st_size > 0
    card = (out / "gguf" / "README.md").read_text()
    assert "tiny-q8_0.gguf" in card and "Teacher terms" in card
    assert "ollama create tiny -f Modelfile" in (out / "ollama" / "README.md").read_text()


def test_cli_vllm_folder_is_merged_safetensors_with_its_command(tiny_smol_dir, tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["export", str(tiny_smol_dir), "--out", str(out), "--format", "vllm", "--name", "s"]
    )
    assert result.exit_code == 0, result.output
    folder = out / "vllm"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.glob("*.bin"))
    script = (folder / "serve_vllm.sh").read_text()
    assert 'vllm serve "$HERE" --served-model-name s' in script
    assert "vllm serve vllm --served-model-name s" in (folder / "README.md").read_text()
    assert "Extract the order number." in (folder / "chat_template.jinja").read_text()
