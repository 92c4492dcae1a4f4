"""The exported GGUF answers like the student: llama.cpp on the q8_0 file against the
transformers student, greedy, on the demo's held-out tickets (#23: ≥ 0.95 agreement).

The student is the embedded SmolLM2 with a LoRA trained briefly by apidistill (its effect is
checked: the merged logits move), so an export that dropped or mis-merged the LoRA, mis-named
a tensor, got the q/k permutation wrong or lost the baked system prompt (the prompts carry the
user's message only) would disagree. One llama.cpp thread: greedy answers do not depend on
the thread count, and OpenMP threads spin on a shared test machine."""

from __future__ import annotations

import pytest

# Training 12 steps takes minutes on a shared 2-core machine: more than the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PROMPTS = 40  # of the 84 held-out tickets: the benchmark runs all of them


def test_q8_0_gguf_agrees_with_the_transformers_student(tmp_path):
    from benchmarks.export_gguf import run

    doc = run(tmp_path, prompts=PROMPTS, max_tokens=40, quants=("q8_0",), steps=12, threads=1)
    assert doc["max_logit_change_from_lora"] > 0.5  # the LoRA changes the model
    q8 = doc["quants"]["q8_0"]
    assert q8["prompts"] == PROMPTS
    assert q8["agreement"] >= 0.95, q8["disagreements"]
