"""Issue 6 acceptance: a student trained on Llama 3.1 outputs carries the license's
obligations (name prefix, attribution) in its exported model card."""

from __future__ import annotations

import warnings

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.policy.engine import decide
from apidistill.policy.obligations import render_obligations_md
from apidistill.train.api import train_student
from apidistill.train.export import export_student


def test_llama_31_obligations_reach_the_exported_model_card(
    tiny_chat_dir, tiny_teacher_records, tmp_path
):
    decision = decide(
        "self_hosted", "meta-llama/Llama-3.1-8B-Instruct", "commercial", channel="weights"
    )
    assert decision.obligations.name_prefix == "Llama"
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
            out_dir=tmp_path / "train",
            progress=False,
        )
        out = export_student(
            result,
            tmp_path / "student",
            base_model=str(tiny_chat_dir),
            merge=False,
            model_card_sections={"Terms and obligations": render_obligations_md([decision])},
        )
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Llama 3.1 Community License" in card
    assert "Llama" in card and "Built with Llama" in card
    assert "not legal advice" in card.lower()
