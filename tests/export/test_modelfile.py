"""The Ollama Modelfile (Ollama is not installed here: its syntax and contents are checked
against Ollama's Modelfile reference: FROM, TEMPLATE, SYSTEM, PARAMETER; no ADAPTER)."""

from __future__ import annotations

import re

import pytest

from apidistill.errors import ExportError
from apidistill.export.ollama import CHATML_TEMPLATE, effective_system, modelfile, write_modelfile
from apidistill.export.student import bake_system_prompt

SMOL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_INSTRUCTION = re.compile(r"^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE)\b")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, a triple-quoted argument spanning lines."""
    out, lines = [], iter(text.splitlines())
    for line in lines:
        m = _INSTRUCTION.match(line)
        assert m, f"not a Modelfile instruction: {line!r}"
        arg = line[m.end() :].strip()
        if arg.startswith('"""'):
            while not (arg.endswith('"""') and len(arg) >= 6):
                arg += "\n" + next(lines)
            arg = arg[3:-3]
        out.append((m.group(1), arg))
    return out


def test_modelfile_names_the_merged_gguf_its_template_system_and_stops():
    text = modelfile("student-q8_0.gguf", SMOL, "Extract the order number.", num_ctx=2048)
    ins = _instructions(text)
    assert ins[0] == ("FROM", "./student-q8_0.gguf")
    assert ("TEMPLATE", CHATML_TEMPLATE) in ins
    assert ("SYSTEM", "Extract the order number.") in ins
    assert ("PARAMETER", 'stop "<|im_end|>"') in ins
    assert ("PARAMETER", "temperature 0") in ins and ("PARAMETER", "repeat_penalty 1") in ins
    assert ("PARAMETER", "num_ctx 2048") in ins
    assert all(i != "ADAPTER" for i, _ in ins)  # Ollama >= 0.34 refuses adapters


def test_the_go_template_renders_the_same_turns_as_the_chat_template():
    """Ollama's template, filled by hand as Ollama fills it, equals the Jinja rendering."""
    from jinja2 import Template

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    jinja = Template(SMOL).render(messages=messages, add_generation_prompt=True)
    go = (
        CHATML_TEMPLATE.replace("{{- if .System }}", "")
        .replace("{{ .System }}", "S")
        .replace("{{ end }}{{- range .Messages }}", "")
        .replace("{{ .Role }}", "user")
        .replace("{{ .Content }}", "U")
        .replace("{{ end }}", "")
    )
    assert go == jinja


def test_system_is_the_baked_prompt_or_the_templates_default(tiny_smol_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_smol_dir)
    assert effective_system(tok) == "Extract the order number."
    tok.chat_template = SMOL
    assert effective_system(tok) == "You are SmolLM"
    tok.chat_template = bake_system_prompt(SMOL, 'Say "hi"\nthen stop')
    assert effective_system(tok) == 'Say "hi"\nthen stop'


def test_write_modelfile_beside_its_gguf(tiny_smol_dir, tmp_path):
    from transformers import AutoTokenizer

    gguf = tmp_path / "s-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    path = write_modelfile(tmp_path, gguf, AutoTokenizer.from_pretrained(tiny_smol_dir))
    assert path.read_text().startswith("FROM ./s-q8_0.gguf\n")
    with pytest.raises(ExportError, match="beside its Modelfile"):
        write_modelfile(tmp_path / "elsewhere", gguf, AutoTokenizer.from_pretrained(tiny_smol_dir))


def test_a_prompt_ollama_cannot_quote_is_refused():
    with pytest.raises(ExportError, match="three double quotes"):
        modelfile("s.gguf", SMOL, 'He said """no"""')


def test_a_template_that_is_not_chatml_is_refused():
    llama3 = "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}"
    with pytest.raises(ExportError, match="ChatML"):
        modelfile("s.gguf", llama3, None)


@pytest.mark.parametrize("name", ["../s.gguf", "s.bin", "a/b.gguf"])
def test_from_names_a_gguf_in_the_same_folder(name):
    with pytest.raises(ExportError, match="in its own folder"):
        modelfile(name, SMOL, None)
