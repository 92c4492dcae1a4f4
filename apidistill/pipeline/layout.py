"""Where a run keeps its files. One folder per run; each stage writes only its own part.

::

    runs/<name>/
      policy.json          the terms decision the harvest ran under
      estimate.json        pre-flight estimate
      journal.sqlite       harvest cache + journal (never pay twice): every answer lives here
      answers.jsonl        which journaled answers the last harvest returned (keys + metadata)
      logprob_fallback.json  written when the teacher gave no usable logprobs and the run falls
                           back to sequence KD (harvest.on_missing_logprobs): train reads it
      dataset/             filtered, deduplicated, balanced, split records + card.md/card.json
      train/               checkpoints and the trained adapter
      student/             exported student (adapter, merged weights, model card)
      export/<format>/     the run file's other export formats (merged, gguf, ollama, vllm)
      eval/                per-request eval results (kept when an endpoint fails)
      report/              report.html + report.json
      summary.json         the numbers the demo prints

Paths never escape the run folder: names come from code, not from user input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def policy(self) -> Path:
        return self.root / "policy.json"

    @property
    def estimate(self) -> Path:
        return self.root / "estimate.json"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def logprob_fallback(self) -> Path:
        return self.root / "logprob_fallback.json"

    @property
    def answers(self) -> Path:
        return self.root / "answers.jsonl"

    @property
    def harvest(self) -> Path:
        """Where runs before the one-journal change kept a copy of every answer (no longer
        written; the run-state guard still knows it)."""
        return self.root / "harvest"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def ensure(self) -> RunLayout:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from apidistill.errors import ConfigError

            raise ConfigError(
                f"cannot create the run folder: {exc.strerror}",
                file=str(self.root),
                hint="set run_dir to a writable folder",
            ) from None
        return self
