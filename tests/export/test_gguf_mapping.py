"""GGUF export: tensor names, the q/k permutation and a full write → transformers-load round
trip (the student's weights come back equal), the chat template and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apidistill.errors import ExportError
from apidistill.export.gguf import (
    export_gguf,
    gguf_file_name,
    gguf_tensor_name,
    permute_qk,
    unpermute_qk,
)


def test_every_llama_parameter_has_its_llama_cpp_name(tiny_llama):
    names = {n: gguf_tensor_name(n) for n in tiny_llama.state_dict()}
    assert names["model.embed_tokens.weight"] == "token_embd.weight"
    assert names["model.norm.weight"] == "output_norm.weight"
    assert names["lm_head.weight"] == "output.weight"
    assert names["model.layers.1.self_attn.q_proj.weight"] == "blk.1.attn_q.weight"
    assert names["model.layers.0.self_attn.o_proj.weight"] == "blk.0.attn_output.weight"
    assert names["model.layers.0.input_layernorm.weight"] == "blk.0.attn_norm.weight"
    assert names["model.layers.0.post_attention_layernorm.weight"] == "blk.0.ffn_norm.weight"
    assert names["model.layers.1.mlp.down_proj.weight"] == "blk.1.ffn_down.weight"
    assert len(set(names.values())) == len(names)  # no two parameters share a GGUF name


def test_an_unknown_parameter_is_an_error_not_dropped():
    with pytest.raises(ExportError, match=r"q_proj\.bias"):
        gguf_tensor_name("model.layers.0.self_attn.q_proj.bias")


@settings(max_examples=60, deadline=None)
@given(
    n_head=st.integers(1, 6),
    half=st.integers(1, 5),
    cols=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_permutation_is_undone_by_transformers_gguf_loader(n_head, half, cols, seed):
    """llama.cpp's layout, undone by transformers' own reverse permutation, is the original."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(seed).standard_normal((n_head * 2 * half, cols)).astype(np.float32)
    permuted = permute_qk(w, n_head)
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(permuted, n_head, n_head)
    assert np.array_equal(back, w)
    assert np.array_equal(unpermute_qk(permuted, n_head), w)
    if half > 1:  # a real reordering, not the identity
        assert not np.array_equal(permuted, w)


def test_file_names_are_safe():
    assert gguf_file_name("acme/ticket student", "q8_0") == "acme-ticket-student-q8_0.gguf"
    assert gguf_file_name("..", "f16") == "student-f16.gguf"


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_round_trip_gives_the_students_weights_back(tiny_smol_dir, tmp_path, quant):
    """Written as GGUF, loaded by transformers' GGUF loader: every weight equal (f16 exactly
    at f16 precision, q8_0 within its quantization step), and the template is the student's."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export_gguf(tiny_smol_dir, tmp_path, quant, name="tiny")
    assert path == tmp_path / f"tiny-{quant}.gguf" and path.is_file()
    fields = GGUFReader(str(path)).fields
    tok = AutoTokenizer.from_pretrained(tiny_smol_dir)
    assert fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert "Extract the order number." in fields["tokenizer.chat_template"].contents()
    assert fields["general.name"].contents() == "tiny"
    assert fields["llama.block_count"].contents() == 2
    mine = AutoModelForCausalLM.from_pretrained(tiny_smol_dir).state_dict()
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).state_dict()
    assert set(back) >= {k for k in mine if k != "lm_head.weight"}
    for k, w in mine.items():
        got = back[k].float()
        if quant == "f16" or w.ndim == 1:
            want = w.half().float() if w.ndim > 1 else w
            assert torch.equal(got, want), k
        else:  # q8_0: blocks of 32 with one scale, error ≤ half a step of 1/127 of the max
            step = w.abs().max() / 127
            assert (got - w).abs().max() <= step, k


def test_quantized_files_are_smaller_than_f16(tiny_smol_dir, tmp_path):
    from apidistill.export.gguf import export_ggufs

    files = export_ggufs(tiny_smol_dir, tmp_path, ["f16", "q8_0", "q4_k_m"], name="t")
    sizes = {q: p.stat().st_size for q, p in files.items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]


def test_another_architecture_is_refused_naming_what_is_supported(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        architectures=["Qwen2ForCausalLM"],
    )
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "qwen")
    with pytest.raises(ExportError, match=r"(?s)LlamaForCausalLM.*Qwen2ForCausalLM") as err:
        export_gguf(tmp_path / "qwen", tmp_path / "out", base_model="smollm2-135m-instruct")
    assert "merged" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written
    from apidistill.export.formats import export_formats

    with pytest.raises(ExportError, match="Qwen2ForCausalLM"):  # refused before merged/ is made
        export_formats(
            tmp_path / "qwen",
            tmp_path / "all",
            ["merged", "gguf"],
            base_model="smollm2-135m-instruct",
        )
    assert not (tmp_path / "all").exists()


def test_a_base_without_gguf_is_a_clear_error(tiny_smol_dir, tmp_path):
    with pytest.raises(ExportError, match="not a GGUF file") as err:
        export_gguf(tiny_smol_dir, tmp_path, base_model=str(tiny_smol_dir))
    assert "--base-gguf" in str(err.value)


def test_an_unknown_quant_is_refused_before_any_work(tmp_path):
    with pytest.raises(ExportError, match=r"(?s)q3_k.*f16, q8_0, q4_k_m"):
        export_gguf(tmp_path / "nowhere", tmp_path, "q3_k")


def test_quantizing_without_llama_cpp_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from apidistill.export.gguf import quantize

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(ExportError, match="llama-cpp-python is not installed") as err:
        quantize(tmp_path / "a-f16.gguf", tmp_path / "a-q8_0.gguf", "q8_0")
    assert "pip install llama-cpp-python" in str(err.value)
