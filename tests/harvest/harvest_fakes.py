"""In-process stand-ins for engine unit tests (end-to-end tests use the real teacher)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from apidistill.errors import TeacherError
from apidistill.records import Completion, GenerationParams, Message, TeacherRequest, Usage
from apidistill.teachers.base import Capabilities, RateLimitSnapshot, TeacherResponse

# script(request, n-th call for this prompt) -> None (answer) or an exception to raise
Script = Callable[[TeacherRequest, int], BaseException | None]


def requests(
    n: int, *, prefix: str = "prompt", max_tokens: int = 16, **meta: object
) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            messages=[Message(role="user", content=f"{prefix} {i}")],
            params=GenerationParams(max_tokens=max_tokens),
            prompt_id=f"{prefix}-{i}",
            metadata={k: (v(i) if callable(v) else v) for k, v in meta.items()},
        )
        for i in range(n)
    ]


def usage_for(req: TeacherRequest) -> Usage:
    words = sum(len(m.content.split()) for m in req.messages or [])
    return Usage(input_tokens=words + 3, output_tokens=min(5, req.params.max_tokens))


@dataclass
class FakeTeacher:
    """Answers after ``latency_s``; ``script`` injects failures; counts calls per prompt."""

    latency_s: float = 0.0
    script: Script | None = None
    provider: str = "fake"
    model: str = "fake-model"
    calls: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    snapshot: RateLimitSnapshot | None = None
    closed: bool = False

    @property
    def teacher_id(self) -> str:
        return "fake:http://fake.local/v1"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        pid = request.prompt_id or ""
        self.calls[pid] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            failure = self.script(request, self.calls[pid]) if self.script else None
            if failure is not None:
                raise failure
            self.answered[pid] += 1
            text = f"answer to {request.messages[0].content}" if request.messages else "x"
            return TeacherResponse(
                completion=Completion(
                    text=text, usage=usage_for(request), provider=self.provider, model=self.model
                ),
                rate_limits=self.snapshot,
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


def fail_times(n: int, make: Callable[[], TeacherError]) -> Script:
    """Fail the first ``n`` calls of every prompt with ``make()``."""
    return lambda req, call: make() if call <= n else None
