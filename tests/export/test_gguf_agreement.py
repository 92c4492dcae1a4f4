"""The exported GGUF answers like the student: llama.cpp on the q8_0 file against the
transformers student, greedy, on the demo's held-out tickets (#23: ≥ 0.95 agreement).

The student is the embedded SmolLM2 with a LoRA whose effect is real (checked: the merged
logits move), so an export that dropped or mis-merged the LoRA, mis-named a tensor or got
the q/k permutation wrong would disagree."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PROMPTS = 40  # of the 84 held-out tickets: the benchmark runs all of them


def test_q8_0_gguf_agrees_with_the_transformers_student(tmp_path):
    from benchmarks.export_gguf import run

    doc = run(tmp_path, prompts=PROMPTS, max_tokens=40, quants=("q8_0",))
    assert doc["max_logit_change_from_lora"] > 0.5  # the LoRA changes the model
    q8 = doc["quants"]["q8_0"]
    assert q8["prompts"] == PROMPTS
    assert q8["agreement"] >= 0.95, q8["disagreements"]
