"""Real students (issue 20, item 5): weights in the run file's dtype, gradient checkpointing,
attention kernel, QLoRA's clear error without CUDA/bitsandbytes, TrainingArguments
pass-through, and the end-of-turn token taken from the chat template for four families."""

from __future__ import annotations

import warnings

import pytest
import torch

from apidistill.config import StudentConfig, TrainingConfig, parse_config
from apidistill.errors import ConfigError
from apidistill.records import Message, Record
from apidistill.testing.chat_families import FAMILIES, family_tokenizer
from apidistill.train import student_model
from apidistill.train.api import train_student
from apidistill.train.collate import build_examples, end_of_turn_id
from apidistill.train.session import build_training_arguments

RUN_HEAD = """\
teacher: {provider: openai_compatible, model: m, base_url: "http://127.0.0.1:1/v1"}
prompts: {path: p.jsonl}
policy: {use: internal}
budget: {usd: 1}
"""


def _cfg(**kw) -> TrainingConfig:
    base = dict(method="sequence_kd", max_steps=2, batch_size=4, learning_rate=5e-3)
    base.update(kw)
    return TrainingConfig.model_validate(base)


def _train(records, student_dir, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_student(
            records,
            None,
            student=StudentConfig(model=str(student_dir)),
            training=_cfg(**kw),
            out_dir=out,
            progress=False,
        )


# --------------------------------------------------------------------------- end of turn


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_labels_end_with_the_templates_end_of_turn_token(family):
    tok = family_tokenizer(family)
    fam = FAMILIES[family]
    eot = tok.convert_tokens_to_ids(fam.end_of_turn)
    assert eot != tok.eos_token_id  # the case eos_token gets wrong
    assert end_of_turn_id(tok) == eot
    rec = Record(id="r", messages=[Message(role="user", content="order 7")], completion="ok 7")
    ex = build_examples([rec], tok, system_prompt=None, max_length=512).examples[0]
    supervised = ex.labels[ex.labels != -100].tolist()
    assert supervised[-1] == eot
    assert tok.decode(supervised[:-1]) == "ok 7"
    # the training row is the template's own rendering of the finished conversation, up to
    # and including the token that ends the assistant turn
    full = tok.apply_chat_template(
        [{"role": "user", "content": "order 7"}, {"role": "assistant", "content": "ok 7"}],
        tokenize=False,
    )
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ex.input_ids.tolist() == ids[: len(ex)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_serving_stops_where_training_taught_to_stop(family):
    from types import SimpleNamespace

    from apidistill.serve.engine import _eos_ids

    tok = family_tokenizer(family)
    stops = _eos_ids(SimpleNamespace(generation_config=None), tok)
    assert {end_of_turn_id(tok), tok.eos_token_id} <= stops


def test_a_cut_off_answer_still_gets_no_end_of_turn():
    tok = family_tokenizer("gemma")
    rec = Record(
        id="r",
        messages=[Message(role="user", content="x")],
        completion="abc",
        finish_reason="length",
    )
    ex = build_examples([rec], tok, system_prompt=None, max_length=512).examples[0]
    assert tok.decode(ex.labels[ex.labels != -100].tolist()) == "abc"


def test_template_without_a_special_end_falls_back_to_eos():
    from apidistill.testing.tiny_tokenizer import char_tokenizer

    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    tok = char_tokenizer(plain)
    assert end_of_turn_id(tok) == tok.eos_token_id


# --------------------------------------------------------------------------- dtype, kernels


def test_student_loads_in_the_run_files_dtype_and_attention(tiny_chat_dir):
    student = StudentConfig(model=str(tiny_chat_dir))
    for dtype in ("bfloat16", "float16", "float32"):
        model = student_model.load_student_model(student, _cfg(dtype=dtype))
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    model = student_model.load_student_model(student, _cfg(attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    assert model.config.use_cache is False


def test_bf16_lora_run_trains_bf16_weights(
    tiny_chat_dir, tiny_teacher_records, tmp_path, monkeypatch
):
    loaded = []
    real = student_model.load_student_model

    def spy(student, training):
        loaded.append(real(student, training))
        return loaded[-1]

    monkeypatch.setattr(student_model, "load_student_model", spy)
    res = _train(tiny_teacher_records[:8], tiny_chat_dir, tmp_path, dtype="bfloat16")
    assert res.steps == 2
    base = {p.dtype for n, p in loaded[0].named_parameters() if "lora_" not in n}
    lora = {p.dtype for n, p in loaded[0].named_parameters() if "lora_" in n}
    assert base == {torch.bfloat16}  # the frozen weights really are bf16, not autocast
    assert lora == {torch.float32}  # peft keeps the trained adapter in fp32
    assert all(h["loss"] == h["loss"] for h in res.log_history if "loss" in h)  # not NaN


def test_gradient_checkpointing_recomputes_activations(
    tiny_chat_dir, tiny_teacher_records, tmp_path, monkeypatch
):
    import transformers.modeling_utils as mu

    calls = []
    real = mu.checkpoint  # what transformers binds when checkpointing is enabled

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    _train(tiny_teacher_records[:8], tiny_chat_dir, tmp_path / "off", max_steps=1)
    assert calls == []
    _train(
        tiny_teacher_records[:8],
        tiny_chat_dir,
        tmp_path / "on",
        max_steps=1,
        gradient_checkpointing=True,
    )
    assert len(calls) >= 2 and set(calls) == {False}  # one per decoder layer, non-reentrant


# --------------------------------------------------------------------------- QLoRA errors


def test_qlora_without_cuda_is_a_config_error(tiny_chat_dir, tiny_teacher_records, tmp_path):
    assert not torch.cuda.is_available()
    with pytest.raises(ConfigError, match=r"training\.quantization: 4bit QLoRA needs a CUDA"):
        _train(tiny_teacher_records[:8], tiny_chat_dir, tmp_path, quantization="4bit")
    assert not (tmp_path / "checkpoints").exists()


def test_qlora_without_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setattr(student_model, "_has_cuda", lambda: True)
    monkeypatch.setattr(student_model, "_has_package", lambda name: name != "bitsandbytes")
    with pytest.raises(ConfigError, match="8bit QLoRA needs the bitsandbytes package") as err:
        student_model.check_student_settings(_cfg(quantization="8bit"))
    assert "pip install bitsandbytes" in str(err.value.hint)


def test_qlora_config_is_nf4_double_quant():
    pytest.importorskip("transformers")
    cfg = student_model.quantization_config(_cfg(quantization="4bit"))
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_use_double_quant and cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_flash_attention_without_its_package_is_a_config_error():
    with pytest.raises(ConfigError, match=r"training\.attn_implementation"):
        student_model.check_student_settings(_cfg(attn_implementation="flash_attention_2"))


def test_quantization_with_full_finetune_is_refused():
    with pytest.raises(ConfigError, match="cannot be combined with full_finetune") as err:
        parse_config(RUN_HEAD + "training: {full_finetune: true, quantization: 4bit}\n", "r.yaml")
    assert err.value.line == 5 and err.value.key == "training"


# --------------------------------------------------------------------------- pass-through


def test_trainer_args_pass_through(tmp_path):
    cfg = parse_config(
        RUN_HEAD
        + "training:\n  trainer_args:\n    lr_scheduler_type: cosine\n    weight_decay: 0.01\n"
        "    max_grad_norm: 0.3\n",
        "r.yaml",
    )
    args = build_training_arguments(cfg.training, tmp_path, has_eval=False)
    assert args.lr_scheduler_type == "cosine" and args.weight_decay == 0.01
    assert args.max_grad_norm == 0.3
    assert args.per_device_train_batch_size == cfg.training.batch_size  # the rest is ours


def test_unknown_trainer_arg_names_the_field_and_line():
    text = RUN_HEAD + "training:\n  trainer_args:\n    weight_decya: 0.01\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "r.yaml")
    msg = str(err.value)
    assert "trainer_args.weight_decya is not a transformers.TrainingArguments field" in msg
    assert "did you mean 'weight_decay'" in msg
    assert err.value.file == "r.yaml" and err.value.line == 6
    assert err.value.key == "training.trainer_args"


def test_trainer_arg_the_section_sets_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"use training\.batch_size"):
        parse_config(
            RUN_HEAD + "training: {trainer_args: {per_device_train_batch_size: 2}}\n", "r.yaml"
        )


def test_bad_trainer_arg_value_fails_before_the_model_loads(
    tiny_chat_dir, tiny_teacher_records, tmp_path, monkeypatch
):
    def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(student_model, "load_student_model", no_load)
    with pytest.raises(ConfigError, match=r"training\.trainer_args: .*bogus"):
        _train(
            tiny_teacher_records[:8],
            tiny_chat_dir,
            tmp_path,
            trainer_args={"lr_scheduler_type": "bogus"},
        )


def test_runs_trained_before_the_new_settings_keep_their_fingerprint(tiny_teacher_records):
    """A run folder from before dtype/attention/QLoRA/trainer_args/candidates existed resumes:
    left at their old behaviour, the new keys do not enter the fingerprint."""
    from apidistill.train.api import _fingerprint, _settings

    new = {"dtype", "attn_implementation", "gradient_checkpointing", "quantization"}
    student, training = StudentConfig(model="x"), _cfg()
    recs = tiny_teacher_records[:4]
    before = _fingerprint(
        recs,
        None,
        student=student.model_dump(exclude={"candidates"}),
        training=training.model_dump(exclude=new | {"trainer_args"}),
        teacher_tokenizer=None,
    )
    now = _fingerprint(
        recs, None, student=_settings(student), training=_settings(training), teacher_tokenizer=None
    )
    assert now == before
    changed = _settings(_cfg(dtype="bfloat16"))
    parts = dict(student=_settings(student), training=changed, teacher_tokenizer=None)
    assert _fingerprint(recs, None, **parts) != now
