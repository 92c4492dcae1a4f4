"""The documented drop-in call works as written (README, docs/quickstart.md):

    apidistill serve --model runs/<name>/student
    client.chat.completions.create(model="student", ...)

It used to answer 404 ("The model `student` does not exist"): the server was named after the
folder path. A model folder is now served under its folder's name, the path kept as an alias.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anthropic
import openai
import pytest

from apidistill.cli.serve import default_served_name


@pytest.fixture(scope="module")
def student_server(tiny_model_dir, tmp_path_factory):
    from apidistill.serve.launcher import launch_server

    student = tmp_path_factory.mktemp("run") / "runs" / "tickets" / "student"
    shutil.copytree(tiny_model_dir, student)
    with launch_server(str(student), startup_timeout=240) as srv:  # no --served-model-name
        yield srv, str(student)


def test_the_quickstarts_call_works_through_both_official_sdks(student_server):
    srv, path = student_server
    msgs = [{"role": "user", "content": "Where is my order #1234?"}]
    oa = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    answer = oa.chat.completions.create(model="student", messages=msgs, max_tokens=3)
    assert answer.model == "student" and answer.choices[0].message.content is not None
    assert [m.id for m in oa.models.list()] == ["student"]
    assert oa.models.retrieve("student").id == "student"
    an = anthropic.Anthropic(base_url=srv.root_url, api_key="unused", max_retries=0)
    msg = an.messages.create(model="student", max_tokens=3, messages=msgs)
    assert msg.model == "student" and msg.content[0].type == "text"
    # The path the server was started with still answers (clients that sent it keep working).
    by_path = oa.chat.completions.create(model=path, messages=msgs, max_tokens=1)
    assert by_path.model == "student"
    with pytest.raises(openai.NotFoundError, match="serves `student`"):
        oa.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=1)


def test_default_served_name(tmp_path):
    folder = tmp_path / "runs" / "t" / "student"
    folder.mkdir(parents=True)
    assert default_served_name(str(folder)) == "student"
    assert default_served_name(str(folder) + "/") == "student"
    assert default_served_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert default_served_name(str(gguf)) == str(gguf)
    assert default_served_name(str(Path(tmp_path / "missing"))) == str(tmp_path / "missing")
