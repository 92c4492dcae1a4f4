"""The backend choice and the llama.cpp engine in-process (default suite: a few seconds).

The HTTP-level checks through the official SDKs are in test_backend_llamacpp.py (slow)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from apidistill.errors import ConfigError
from apidistill.records import GenerationParams, Message
from apidistill.serve import backends
from apidistill.serve.backends import find_gguf, resolve_backend
from apidistill.testing.llamacpp_server import EMBEDDED_GGUF_MODEL, embedded_gguf


@pytest.fixture(scope="module")
def engine():
    from apidistill.serve.backends.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine.from_gguf(embedded_gguf(), num_threads=1, prefix_cache=False)
    yield eng
    eng.close()


def run(coro):
    return asyncio.run(coro)


def test_greedy_generation_with_logprobs_ids_and_bytes(engine):
    msgs = [Message(role="user", content="Say hello.")]
    params = GenerationParams(max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    (out,) = run(engine.generate(msgs, None, params))
    (again,) = run(engine.generate(msgs, None, params))
    assert out.text and out.text == again.text and out.token_ids == again.token_ids
    assert len(out.logprobs) == len(out.token_ids) > 0
    joined = b"".join(bytes(lp.bytes) for lp in out.logprobs)
    assert joined.decode("utf-8") == out.text
    for lp, tid in zip(out.logprobs, out.token_ids, strict=True):
        assert lp.token_id == tid and lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0].logprob >= lp.logprob - 1e-9
        assert engine.llm.detokenize([tid], special=True) == bytes(lp.bytes)
    # greedy: the chosen token is the top alternative
    assert all(lp.top[0].token_id == lp.token_id for lp in out.logprobs)


def test_stop_strings_and_eos_end_like_the_transformers_engine(engine):
    msgs = [Message(role="user", content="Count: 1, 2, 3, 4, 5, 6")]
    free = run(engine.generate(msgs, None, GenerationParams(max_tokens=8, temperature=0)))[0]
    assert free.completion_tokens <= 8
    stop = free.text[2:4]
    if not stop.strip():
        pytest.skip("the greedy answer has no stop-worthy text")
    cut = run(
        engine.generate(msgs, None, GenerationParams(max_tokens=8, temperature=0, stop=[stop]))
    )[0]
    assert cut.finish_reason == "stop" and cut.stop_sequence == stop
    assert cut.text == free.text[: free.text.find(stop)]


def test_the_chat_template_comes_from_the_gguf(engine):
    ids = engine.encode_messages([Message(role="user", content="hi")])
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    prefill = engine.encode_messages(
        [Message(role="user", content="hi"), Message(role="assistant", content="Hello")],
        continue_final_message=True,
    )
    assert engine.tokenizer.decode(prefill).endswith("<|im_start|>assistant\nHello")


def test_a_request_that_fails_does_not_fail_the_next(engine, monkeypatch):
    runner = engine._runner
    real = runner._generate
    calls = []

    def flaky(req):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(req)

    monkeypatch.setattr(runner, "_generate", flaky)
    msgs = [Message(role="user", content="hi")]

    async def both():
        params = GenerationParams(max_tokens=2, temperature=0)
        return await asyncio.gather(
            engine.generate(msgs, None, params),
            engine.generate(msgs, None, params),
            return_exceptions=True,
        )

    first, second = run(both())
    assert isinstance(first, Exception) and "boom" in str(first)
    assert second[0].text


def test_bad_json_schema_is_a_config_error_naming_response_format(engine):
    params = GenerationParams(
        max_tokens=4,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
    )
    with pytest.raises(ConfigError) as err:
        engine.prepare([Message(role="user", content="hi")], None, params)
    assert err.value.key == "response_format.json_schema.schema"


# --------------------------------------------------------------------------- backend choice


def test_auto_picks_llamacpp_for_a_gguf_and_transformers_otherwise(tmp_path, tiny_model_dir):
    assert resolve_backend("auto", EMBEDDED_GGUF_MODEL) == "llamacpp"
    assert resolve_backend("auto", str(embedded_gguf())) == "llamacpp"
    assert resolve_backend("auto", str(tiny_model_dir)) == "transformers"
    assert resolve_backend("auto", EMBEDDED_GGUF_MODEL, adapter="x") == "transformers"
    assert resolve_backend("auto", EMBEDDED_GGUF_MODEL, device="cuda") == "transformers"
    with pytest.raises(ConfigError) as err:
        resolve_backend("llamacpp", EMBEDDED_GGUF_MODEL, device="cuda")
    assert err.value.key == "--device"


def test_auto_falls_back_to_transformers_without_llama_cpp(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name)
    )
    assert resolve_backend("auto", EMBEDDED_GGUF_MODEL) == "transformers"


def test_a_folder_with_gguf_exports_prefers_q8_0(tmp_path, tiny_model_dir):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    for name in ("student.q4_k_m.gguf", "student.f16.gguf", "student.q8_0.gguf"):
        (folder / name).write_bytes(b"GGUF")
    assert find_gguf(str(folder)).name == "student.q8_0.gguf"
    assert resolve_backend("auto", str(folder)) == "llamacpp"
    assert backends.fastest_backend(str(folder)) == "llamacpp"


@pytest.mark.parametrize(
    ("name", "model", "adapter", "key"),
    [
        ("nope", EMBEDDED_GGUF_MODEL, None, "--backend"),
        ("llamacpp", EMBEDDED_GGUF_MODEL, "some-adapter", "--adapter"),
    ],
)
def test_impossible_choices_are_config_errors(name, model, adapter, key):
    with pytest.raises(ConfigError) as err:
        resolve_backend(name, model, adapter=adapter)
    assert err.value.key == key


def test_llamacpp_needs_a_gguf(tiny_model_dir):
    with pytest.raises(ConfigError, match="no GGUF") as err:
        resolve_backend("llamacpp", str(tiny_model_dir))
    assert err.value.key == "--model"


def test_vllm_says_what_is_missing():
    from apidistill.serve.backends.vllm import check_vllm

    with pytest.raises(ConfigError) as err:
        check_vllm("student")
    assert err.value.key == "--backend"
    assert "vllm" in err.value.message.lower() or "CUDA" in err.value.message
