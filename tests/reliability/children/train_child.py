"""Child process: train a tiny LoRA student with a checkpoint every step, resuming.

Usage: python train_child.py MODEL_DIR RECORDS_JSONL OUT_DIR MAX_STEPS
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import transformers

from apidistill.config import LoraConfig, StudentConfig, TrainingConfig
from apidistill.records import Record
from apidistill.train.api import train_student


def _paced(step):
    """Each step takes at least PACE seconds, so the parent can land a kill mid-run on any
    machine speed (a tiny model otherwise finishes between two polls)."""

    def training_step(self, *args, **kwargs):
        time.sleep(PACE)
        return step(self, *args, **kwargs)

    return training_step


PACE = 0.3


def main() -> None:
    transformers.Trainer.training_step = _paced(transformers.Trainer.training_step)
    model_dir, records_path, out_dir, max_steps = sys.argv[1:5]
    warnings.simplefilter("ignore")
    recs = [
        Record.model_validate_json(line) for line in Path(records_path).read_text().splitlines()
    ]
    training = TrainingConfig(
        method="sequence_kd",
        max_steps=int(max_steps),
        save_steps=1,
        batch_size=2,
        max_length=64,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
    )
    os.write(1, b"ready\n")
    result = train_student(
        recs,
        None,
        student=StudentConfig(model=model_dir),
        training=training,
        out_dir=Path(out_dir),
        resume=True,
        progress=False,
    )
    os.write(1, (json.dumps({"steps": result.steps}) + "\n").encode())


if __name__ == "__main__":
    main()
