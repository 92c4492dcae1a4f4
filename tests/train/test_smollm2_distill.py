"""End to end on the embedded SmolLM2-135M: the prompted model is the teacher, the same model
without the prompt is the student. A few dozen LoRA logprob-KD steps must lower the held-out
KL to the teacher and raise top-1 agreement; resuming from a checkpoint must continue the
same loss curve."""

from __future__ import annotations

import random
import shutil
import warnings

import pytest

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.records import Message

pytestmark = pytest.mark.slow

PRODUCTS = ["blue mug", "desk lamp", "wool scarf", "phone case", "garden hose", "yoga mat"]
OPENERS = ["Hi,", "Hello team,", "Good morning.", "Hey,", "Dear support,"]
ISSUES = ["has not arrived", "came broken", "is late", "is missing a part"]


def _ticket(rnd: random.Random) -> tuple[str, str]:
    num, product = rnd.randint(10000, 99999), rnd.choice(PRODUCTS)
    text = f"{rnd.choice(OPENERS)} my order #{num} for a {product} {rnd.choice(ISSUES)}."
    return text, f"order_id: {num}\nproduct: {product}"


def _teacher_prompt() -> list[Message]:
    """The prototype prompt: an instruction and six worked examples (the student gets none)."""
    rnd = random.Random(99)
    turns = [Message(role="system", content="Extract the order number and the product.")]
    for _ in range(6):
        text, answer = _ticket(rnd)
        turns += [Message(role="user", content=text), Message(role="assistant", content=answer)]
    return turns


def _tickets(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [_ticket(rnd)[0] for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from apidistill.model_loading import load_model, load_tokenizer
    from apidistill.train.localteacher import teacher_records

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    recs = teacher_records(
        model,
        tok,
        _tickets(40),
        teacher_prompt=_teacher_prompt(),
        max_new_tokens=20,
        top_k=20,
    )
    return {"tok": tok, "model": model, "train": recs[:32], "heldout": recs[32:]}


def test_lora_logprob_kd_moves_student_to_teacher_and_resumes(setup, tmp_path_factory):
    from apidistill.model_loading import load_model
    from apidistill.train.api import train_student
    from apidistill.train.heldout import teacher_fit

    tok, heldout = setup["tok"], setup["heldout"]
    before = teacher_fit(setup["model"], tok, heldout, system_prompt=None)
    training = TrainingConfig(
        method="logprob_kd",
        epochs=6,
        batch_size=8,
        learning_rate=5e-4,
        save_steps=8,
        max_length=256,
    )
    out = tmp_path_factory.mktemp("smol")
    student = StudentConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train_student(
            setup["train"], None, student=student, training=training, out_dir=out, progress=False
        )
    assert res.steps == 24 and res.supervised_share == 1.0
    after_model = load_model("smollm2-135m-instruct", adapter=str(res.adapter_dir))
    after = teacher_fit(after_model, tok, heldout, system_prompt=None)
    print(f"held-out before {before}\nafter {after}\ntrain {res.train_seconds:.1f}s")
    assert after["kl"] < 0.5 * before["kl"]
    assert after["top1_agreement"] > before["top1_agreement"] + 0.1

    # resume: keep only the step-16 checkpoint, as if the run died after saving it
    crashed = tmp_path_factory.mktemp("smol_crashed")
    shutil.copytree(out, crashed, dirs_exist_ok=True)
    (crashed / "train_result.json").unlink()
    shutil.rmtree(crashed / "adapter")
    for ck in (crashed / "checkpoints").glob("checkpoint-*"):
        if ck.name != "checkpoint-16":
            shutil.rmtree(ck)
    assert (crashed / "checkpoints" / "checkpoint-16").is_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = train_student(
            setup["train"],
            None,
            student=student,
            training=training,
            out_dir=crashed,
            progress=False,
        )
    full = {h["step"]: h["loss"] for h in res.log_history if "loss" in h}
    resumed = {h["step"]: h["loss"] for h in again.log_history if "loss" in h}
    for step in range(17, 25):
        assert resumed[step] == pytest.approx(full[step], rel=1e-3)
