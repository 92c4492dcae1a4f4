"""Issue 11: untrusted files are safetensors only. Export refuses an adapter or model folder
holding pickle-format weights (``adapter_model.bin``, ``pytorch_model.bin``, ``*.pt``...) with
one line that names the file and says to convert it, before it loads or writes anything."""

from __future__ import annotations

import shutil
import warnings

import pytest

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.errors import TrainingError
from apidistill.export import export_student
from apidistill.train.api import train_student


@pytest.fixture(scope="module")
def adapter_dir(tiny_chat_dir, tiny_teacher_records, tmp_path_factory):
    training = TrainingConfig.model_validate(
        {"method": "sequence_kd", "max_steps": 1, "batch_size": 4, "epochs": 1}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_student(
            tiny_teacher_records[:8],
            None,
            student=StudentConfig(model=str(tiny_chat_dir)),
            training=training,
            out_dir=tmp_path_factory.mktemp("train"),
            progress=False,
        )
    return result.adapter_dir


def test_clean_adapter_copy_exports(adapter_dir, tiny_chat_dir, tmp_path):
    # The control: the same folder without a pickle exports (the Trainer's own
    # training_args.bin in it is never read, so it is not refused).
    src = tmp_path / "adapter"
    shutil.copytree(adapter_dir, src)
    assert (src / "training_args.bin").is_file()
    out = export_student(src, tmp_path / "out", base_model=str(tiny_chat_dir), merge=False)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "pickle_name", ["adapter_model.bin", "pytorch_model.bin", "adapter.pt", "weights.pth"]
)
def test_adapter_with_pickle_weights_is_refused(adapter_dir, tiny_chat_dir, tmp_path, pickle_name):
    src = tmp_path / "adapter"
    shutil.copytree(adapter_dir, src)
    (src / pickle_name).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    with pytest.raises(TrainingError) as exc:
        export_student(src, tmp_path / "out", base_model=str(tiny_chat_dir))
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(src / pickle_name) in msg and "convert it to safetensors" in msg
    assert not (tmp_path / "out").exists()


def test_full_model_with_only_pytorch_model_bin_is_refused(tiny_chat_dir, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(tiny_chat_dir, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")  # stands in for a pickle
    with pytest.raises(TrainingError, match=r"pytorch_model\.bin: pickle-format weights"):
        export_student(src, tmp_path / "out", base_model=str(tiny_chat_dir))
