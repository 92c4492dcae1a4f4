"""Device and dtype outside training (issue #23 item 4): serve, eval generation and held-out
KL load bfloat16 on a CUDA GPU and float32 on CPU unless told otherwise. No GPU here: the
choice is tested with ``torch.cuda.is_available`` patched, the CPU path for real."""

from __future__ import annotations

import pytest
import torch

from apidistill.devices import select_device
from apidistill.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_float32_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == ("cpu", "float32")
    assert select_device("cpu", "bfloat16") == ("cpu", "bfloat16")


def test_auto_is_bfloat16_on_cuda(fake_cuda):
    assert select_device() == ("cuda", "bfloat16")
    assert select_device("cuda:1", "auto") == ("cuda:1", "bfloat16")
    assert select_device("auto", "float32") == ("cuda", "float32")
    assert select_device("cpu") == ("cpu", "float32")


def test_old_gpus_without_bf16_get_float16(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert select_device() == ("cuda", "float16")


def test_cuda_without_a_gpu_and_unknown_names_are_config_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU") as err:
        select_device("cuda", key="serve.device")
    assert err.value.key == "serve.device"
    with pytest.raises(ConfigError) as err:
        select_device("tpu")
    assert err.value.key == "device"
    with pytest.raises(ConfigError) as err:
        select_device("cpu", "int8", key="--device")
    assert err.value.key == "--dtype"


def test_the_transformers_backend_loads_in_the_chosen_dtype_for_real(tiny_model_dir):
    import asyncio

    from apidistill.records import GenerationParams
    from apidistill.serve.backends import load_engine

    fp32 = load_engine(str(tiny_model_dir), backend="transformers", num_threads=1)
    bf16 = load_engine(
        str(tiny_model_dir), backend="transformers", dtype="bfloat16", device="cpu", num_threads=1
    )
    try:
        assert next(fp32.model.parameters()).dtype == torch.float32
        assert next(bf16.model.parameters()).dtype == torch.bfloat16
        assert fp32.fingerprint != bf16.fingerprint
        params = GenerationParams(max_tokens=3, temperature=0, logprobs=True)
        (out,) = asyncio.run(bf16.generate(None, "hi", params))
        assert len(out.token_ids) == len(out.logprobs) > 0
    finally:
        fp32.close()
        bf16.close()


def test_heldout_kl_loads_bfloat16_on_cuda(fake_cuda, monkeypatch):
    """Held-out KL asks for the chosen dtype (the load is stopped before any GPU is needed)."""
    import apidistill.model_loading as models
    from apidistill.eval import scoring

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_load(spec, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(models, "load_model", fake_load)
    monkeypatch.setattr(models, "load_tokenizer", lambda spec: object())
    with pytest.raises(Stop):
        scoring.heldout_kl("smollm2-135m-instruct", [])
    assert seen["dtype"] == "bfloat16"
    seen.clear()
    with pytest.raises(Stop):
        scoring.heldout_kl("smollm2-135m-instruct", [], device="cpu")
    assert seen["dtype"] == "float32"


def test_eval_servers_pass_the_eval_device_and_pin_transformers(monkeypatch):
    from apidistill.config import EvalConfig
    from apidistill.pipeline import run as pipeline_run

    class Cfg:
        eval = EvalConfig(device="cuda", dtype="bfloat16")

    assert pipeline_run._device_args(Cfg()) == ["--device", "cuda", "--dtype", "bfloat16"]
