"""The suite's target selection (``APIDISTILL_REL_TARGET``) and the fault server's key check."""

from __future__ import annotations

import httpx2
import pytest
from rel_target import TargetError, parse_target

from apidistill.testing.fault_server import FaultServerProcess


def test_target_defaults_to_the_fault_server_and_names_llamacpp():
    assert parse_target({}).kind == "fault"
    spec = parse_target({"APIDISTILL_REL_TARGET": "llamacpp"})
    assert (spec.kind, spec.profile) == ("llamacpp", "llamacpp")


def test_a_url_target_takes_model_key_env_and_profile():
    env = {
        "APIDISTILL_REL_TARGET": "http://127.0.0.1:8000/v1/",
        "APIDISTILL_REL_MODEL": "my-model",
        "APIDISTILL_REL_KEY_ENV": "MY_CRED",
        "MY_CRED": "abc123456",
        "APIDISTILL_REL_PROFILE": "vllm",
    }
    spec = parse_target(env)
    assert (spec.kind, spec.url, spec.model, spec.key_env, spec.profile) == (
        "url",
        "http://127.0.0.1:8000/v1",
        "my-model",
        "MY_CRED",
        "vllm",
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"APIDISTILL_REL_TARGET": "llama"}, "use 'fault', 'llamacpp' or the base URL"),
        ({"APIDISTILL_REL_TARGET": "http://h:1/v1"}, "set APIDISTILL_REL_MODEL"),
        (
            {
                "APIDISTILL_REL_TARGET": "http://h:1/v1",
                "APIDISTILL_REL_MODEL": "m",
                "APIDISTILL_REL_KEY_ENV": "NOPE",
            },
            "the env var NOPE is empty",
        ),
    ],
)
def test_unusable_targets_say_what_to_set(env, says):
    with pytest.raises(TargetError, match=says):
        parse_target(env)


def test_fault_server_refuses_a_wrong_key_like_openai():
    with FaultServerProcess(api_key="right-key-123") as srv:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        url = f"{srv.base_url}/chat/completions"
        wrong = httpx2.post(url, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        right = httpx2.post(url, json=body, headers={"Authorization": "Bearer right-key-123"})
        assert right.status_code == 200
        assert srv.stats()["billed"] == 1
