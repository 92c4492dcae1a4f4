"""train_student / export_student on a tiny model built in code: errors before training,
loss decreasing, resume on the same loss curve, exports that load and match."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.errors import TrainingError
from apidistill.export import export_student
from apidistill.records import Record
from apidistill.train.api import TrainResult, train_student

from .helpers import char_tokenizer


def _cfg(**kw) -> TrainingConfig:
    base = dict(method="logprob_kd", epochs=2, batch_size=4, learning_rate=5e-3, kd={"top_k": 5})
    base.update(kw)
    return TrainingConfig.model_validate(base)


def _losses(result: TrainResult) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in result.log_history if "loss" in h}


# --------------------------------------------------------------------------- bad input


def test_empty_dataset(tiny_chat_dir, tmp_path):
    with pytest.raises(TrainingError, match="training set is empty"):
        train_student(
            [],
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=_cfg(),
            out_dir=tmp_path,
        )


def test_logprob_kd_without_logprobs(tiny_chat_dir, tmp_path):
    recs = [Record(id="a", prompt="x", completion="y")]
    with pytest.raises(TrainingError, match="no training record has teacher logprobs") as e:
        train_student(
            recs,
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=_cfg(),
            out_dir=tmp_path,
        )
    assert "sequence_kd" in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


def test_student_without_chat_template(tiny_chat_dir, tmp_path, tiny_teacher_records):
    folder = tmp_path / "no_template"
    shutil.copytree(tiny_chat_dir, folder)
    char_tokenizer(chat_template=None).save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(TrainingError, match="no chat template"):
        train_student(
            tiny_teacher_records,
            None,
            student=StudentConfig(model=str(folder)),
            training=_cfg(),
            out_dir=tmp_path / "out",
        )


def test_lora_target_matching_nothing(tiny_chat_dir, tmp_path, tiny_teacher_records):
    cfg = _cfg(lora={"target_modules": ["q_proj", "query_key_value"]})
    with pytest.raises(TrainingError, match="query_key_value") as e:
        train_student(
            tiny_teacher_records,
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=cfg,
            out_dir=tmp_path,
            progress=False,
        )
    assert "q_proj" in str(e.value.hint) and "all-linear" in str(e.value.hint)
    assert not list((tmp_path / "checkpoints").glob("checkpoint-*"))


def test_early_stopping_needs_validation(tiny_chat_dir, tmp_path, tiny_teacher_records):
    with pytest.raises(TrainingError, match="validation"):
        train_student(
            tiny_teacher_records,
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=_cfg(early_stopping_patience=2),
            out_dir=tmp_path,
        )


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tiny_chat_dir, tiny_teacher_records, tmp_path_factory):
    """16 train / 8 validation records, 8 steps, a checkpoint every 3 steps."""
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_student(
            tiny_teacher_records[:16],
            tiny_teacher_records[16:],
            student=StudentConfig(model=str(tiny_chat_dir), system_prompt="Be brief."),
            training=_cfg(save_steps=3),
            out_dir=out,
            progress=False,
        )
    return res


def test_training_logs_and_lowers_the_loss(trained):
    assert trained.steps == 8 and trained.train_examples == 16
    losses = _losses(trained)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1]
    kd = [h["kd"] for h in trained.log_history if "kd" in h and "loss" in h]
    assert kd[-1] < kd[0]
    assert all("tokens_per_s" in h for h in trained.log_history if "loss" in h and h["step"] > 1)
    assert {"eval_loss", "eval_kd", "eval_top1_agreement"} <= set(trained.eval_metrics)
    assert trained.supervised_share > 0.9  # same tokenizer: (nearly) every answer token
    assert (trained.adapter_dir / "adapter_model.safetensors").is_file()
    assert (trained.adapter_dir / "base_model.txt").read_text().strip() == trained.base_model
    assert TrainResult.load(trained.out_dir) == trained


def test_finished_run_is_returned_without_training(trained, tiny_teacher_records):
    res = train_student(
        tiny_teacher_records[:16],
        tiny_teacher_records[16:],
        student=StudentConfig(model=trained.base_model, system_prompt="Be brief."),
        training=_cfg(save_steps=3),
        out_dir=trained.out_dir,
        progress=False,
    )
    assert res == trained


def test_changed_settings_refuse_old_checkpoints(trained, tiny_teacher_records, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained.out_dir, out)
    (out / "train_result.json").unlink()
    with pytest.raises(TrainingError, match="different data or settings"):
        train_student(
            tiny_teacher_records[:16],
            None,
            student=StudentConfig(model=trained.base_model, system_prompt="Be brief."),
            training=_cfg(save_steps=3, learning_rate=1e-3),
            out_dir=out,
            progress=False,
        )


def test_resume_continues_the_same_loss_curve(trained, tiny_teacher_records, tmp_path):
    # Simulate a crash right after the step-3 checkpoint: keep only that checkpoint.
    out = tmp_path / "crashed"
    shutil.copytree(trained.out_dir, out)
    (out / "train_result.json").unlink()
    shutil.rmtree(out / "adapter")
    for ck in (out / "checkpoints").glob("checkpoint-*"):
        if ck.name != "checkpoint-3":
            shutil.rmtree(ck)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train_student(
            tiny_teacher_records[:16],
            tiny_teacher_records[16:],
            student=StudentConfig(model=trained.base_model, system_prompt="Be brief."),
            training=_cfg(save_steps=3),
            out_dir=out,
            progress=False,
        )
    full, again = _losses(trained), _losses(resumed)
    assert sorted(again) == list(range(1, 9))
    for step in range(4, 9):  # steps run after the resume
        assert again[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5)
    assert resumed.eval_metrics["eval_loss"] == pytest.approx(
        trained.eval_metrics["eval_loss"], rel=1e-4
    )


def test_an_api_encoding_is_a_known_other_vocabulary(tiny_chat_dir, tmp_path):
    from apidistill.train.api import _same_vocab

    tok = char_tokenizer()
    student = StudentConfig(model=str(tiny_chat_dir))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not loadable")  # known: no such warning
        assert _same_vocab(tok, student, None) is True
        assert _same_vocab(tok, student, "o200k_base") is False
        assert _same_vocab(tok, student, "cl100k_base") is False
    with pytest.warns(UserWarning, match="not loadable"):  # unknown: said so, then bytes
        assert _same_vocab(tok, student, str(tmp_path / "no_such_tokenizer")) is False


def test_teacher_tokenizer_o200k_aligns_every_record_by_bytes(
    tiny_chat_dir, tiny_teacher_records, tmp_path
):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_student(
            tiny_teacher_records[:4],
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=_cfg(max_steps=1),
            out_dir=tmp_path,
            teacher_tokenizer="o200k_base",
            progress=False,
        )
    assert not [w for w in caught if "not loadable" in str(w.message)]
    assert res.byte_aligned_records == 4
    # the teacher's tokens are single characters here, so bytes line up everywhere
    assert res.supervised_share > 0.9


def test_sequence_kd_and_full_finetune(tiny_chat_dir, tiny_teacher_records, tmp_path):
    res = train_student(
        tiny_teacher_records[:8],
        None,
        student=StudentConfig(model=str(tiny_chat_dir)),
        training=_cfg(method="sequence_kd", full_finetune=True, epochs=1, packing=True),
        out_dir=tmp_path,
        progress=False,
    )
    assert res.adapter_dir is None and (res.model_dir / "config.json").is_file()
    assert res.supervised_share == 0.0
    assert all("kd" not in h for h in res.log_history)


# --------------------------------------------------------------------------- export


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_merged_and_adapter_load_and_match(trained, tmp_path):
    from apidistill.model_loading import load_model, load_tokenizer

    ids = torch.tensor([[5, 20, 30, 40, 7]])
    want = _logits(load_model(trained.base_model, adapter=str(trained.adapter_dir)), ids)

    merged = export_student(
        trained,
        tmp_path / "merged",
        base_model=trained.base_model,
        model_card_sections={"Policy obligations": "Name must start with `Tiny`."},
    )
    assert (merged / "model.safetensors").is_file()
    assert (merged / "adapter" / "adapter_config.json").is_file()
    torch.testing.assert_close(_logits(load_model(str(merged)), ids), want, atol=1e-4, rtol=1e-4)
    card = (merged / "README.md").read_text()
    assert "## Policy obligations\n\nName must start with `Tiny`." in card
    assert "logprob_kd" in card and "Be brief." in card
    assert "--enable-lora" in (merged / "serve_vllm.sh").read_text()
    # the student's system prompt is the exported template's default
    tok = load_tokenizer(str(merged))
    text = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")

    adapter_only = export_student(
        trained.out_dir, tmp_path / "lora", base_model=trained.base_model, merge=False
    )
    assert (adapter_only / "adapter_config.json").is_file()
    assert not (adapter_only / "model.safetensors").exists()
    torch.testing.assert_close(_logits(load_model(str(adapter_only)), ids), want)


def test_export_rejects_a_folder_that_is_no_training_output(tmp_path):
    with pytest.raises(TrainingError, match="not a training output"):
        export_student(tmp_path, tmp_path / "x", base_model="smollm2-135m-instruct")


def test_early_stopping_stops_and_keeps_the_best(tiny_chat_dir, tiny_teacher_records, tmp_path):
    # A learning rate far too high makes the validation loss worsen after the first steps.
    cfg = _cfg(learning_rate=0.5, epochs=4, eval_steps=1, early_stopping_patience=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_student(
            tiny_teacher_records[:16],
            tiny_teacher_records[16:],
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=cfg,
            out_dir=tmp_path,
            progress=False,
        )
    evals = [(h["step"], h["eval_loss"]) for h in res.log_history if "eval_loss" in h]
    # Early stopping's rule, replayed on the logged curve: stop once `patience` evaluations in
    # a row fail to beat the best so far.
    best, bad, expected_stop = float("inf"), 0, 16  # 4 epochs × 4 steps were allowed
    for step, loss in evals:
        best, bad = (loss, 0) if loss < best else (best, bad + 1)
        if bad >= 2:
            expected_stop = step
            break
    assert res.steps == expected_stop
    assert res.eval_metrics["eval_loss"] == pytest.approx(min(e for _, e in evals), rel=1e-5)


def test_compact_records_resume_a_run_trained_on_full_records(
    tiny_chat_dir, tiny_teacher_records, tmp_path
):
    """The pipeline now hands training records whose logprobs stay in the dataset's compact
    arrays. A run folder written from the full records of the same dataset (every pipeline
    run before that) is still recognised: its fingerprint is recomputed from the rebuilt
    records and the finished run is returned as is; a changed record is still refused."""
    from apidistill.data.store import load_records, save_records
    from apidistill.train.api import _Fingerprint
    from apidistill.train.compact_targets import load_compact_split

    save_records(tiny_teacher_records[:8], tmp_path / "ds")
    full = load_records(tmp_path / "ds")
    light, compact = load_compact_split(tmp_path / "ds")
    assert all(r.logprobs is None for r in light) and len(compact) == 8
    kw = dict(
        student=StudentConfig(model=str(tiny_chat_dir)),
        training=_cfg(epochs=1, save_steps=1),
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = train_student(full, None, out_dir=tmp_path / "run", **kw)
        again = train_student(light, None, out_dir=tmp_path / "run", compact=compact, **kw)
    assert again == before

    legacy = _Fingerprint(full, None, {}, {}).value
    now = _Fingerprint(light, None, compact, {})
    assert now.value != legacy and now.matches(legacy) and now.matches(now.value)
    edited = [light[0].model_copy(update={"completion": light[0].completion + "!"}), *light[1:]]
    assert not _Fingerprint(edited, None, compact, {}).matches(legacy)
