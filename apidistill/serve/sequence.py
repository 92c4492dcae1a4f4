"""One generated sequence: its tokens, its text, when it stops, and what may be streamed yet.

Why text is handled here and not by the client: stop strings can end in the middle of a
token, and a byte-level token can hold half of a UTF-8 character. Text already streamed can
never be taken back, so the streamable text holds back an incomplete character and the last
``len(longest stop) - 1`` characters until they are known not to start a stop string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from apidistill.serve.sampling import SamplingParams, StepChoice

__all__ = ["FinishInfo", "SeqEvent", "SeqState"]

FinishReason = Literal["stop", "length"]


@dataclass
class FinishInfo:
    """How a sequence ended. ``token_count`` tokens of ``steps`` belong to ``text``."""

    reason: FinishReason
    text: str
    token_count: int
    generated: int  # every token the model produced, an ending EOS included (billed tokens)
    stop_sequence: str | None = None


@dataclass
class SeqEvent:
    """What the worker reports for one sequence after a step (or an error, or the end)."""

    steps: list[StepChoice] = field(default_factory=list)
    text_delta: str = ""
    finish: FinishInfo | None = None
    error: BaseException | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_steps: list[StepChoice | None] | None = None  # echo: one per prompt token


class SeqState:
    """Accumulates the tokens of one sequence and decides when it is finished."""

    def __init__(self, params: SamplingParams, decode: Callable[[list[int]], str]) -> None:
        self.params = params
        self._decode = decode
        self.steps: list[StepChoice] = []
        self.text = ""
        self.streamed = 0  # characters of ``text`` already handed out
        self.steps_out = 0  # tokens of ``steps`` already handed out
        self._ends: list[int] = []  # text length after each token
        self.generated = 0
        self.finish: FinishInfo | None = None
        self._hold = max((len(s) for s in params.stop), default=1) - 1

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    def push(self, choice: StepChoice) -> tuple[str, list[StepChoice]]:
        """Add one chosen token; returns the newly streamable text and the tokens whose text
        it completes (both may be empty)."""
        self.generated += 1
        if choice.token_id in self.params.stop_token_ids:
            self._end("stop", None, len(self.steps))
            return self._flush()
        self.steps.append(choice)
        self.text = self._decode(self.token_ids)
        self._ends.append(len(self.text))
        if self.params.stop:
            hit = self._find_stop()
            if hit is not None:
                at, seq = hit
                self.text = self.text[:at]
                self._end("stop", seq, self._tokens_covering(at))
                return self._flush()
        if len(self.steps) >= self.params.max_tokens:
            self._end("length", None, len(self.steps))
            return self._flush()
        return self._flush(hold=True)

    def end_without_tokens(self) -> None:
        """``max_tokens`` 0 (prompt scoring): finished before generating anything."""
        self._end("length", None, 0)

    def _find_stop(self) -> tuple[int, str] | None:
        # Only text that could contain a new match: the tail the last step might complete.
        start = max(0, self.streamed - self._hold)
        best: tuple[int, str] | None = None
        for s in self.params.stop:
            at = self.text.find(s, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, s)
        return best

    def _tokens_covering(self, chars: int) -> int:
        """Fewest leading tokens whose text reaches ``chars`` characters."""
        if chars == 0:
            return 0
        return next((k + 1 for k, end in enumerate(self._ends) if end >= chars), len(self.steps))

    def _end(self, reason: FinishReason, stop: str | None, keep: int) -> None:
        del self.steps[keep:]
        self.finish = FinishInfo(reason, self.text, keep, self.generated, stop)

    def _flush(self, *, hold: bool = False) -> tuple[str, list[StepChoice]]:
        end = len(self.text)
        if hold:
            while end > self.streamed and self.text[end - 1] == "\ufffd":
                end -= 1  # an incomplete UTF-8 character; the next token completes it
            end = max(self.streamed, end - self._hold)
        delta = self.text[self.streamed : end]
        self.streamed = max(self.streamed, end)
        upto = len(self.steps)
        if hold:
            upto = self.steps_out
            while upto < len(self.steps) and self._ends[upto] <= self.streamed:
                upto += 1
        out = self.steps[self.steps_out : upto]
        self.steps_out = max(self.steps_out, upto)
        return delta, out
