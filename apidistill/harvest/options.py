"""The typed arguments of :func:`apidistill.harvest` and how they turn into an engine setup.

``harvest()`` takes the run file's own models (:class:`~apidistill.config.TeacherConfig`,
:class:`~apidistill.config.HarvestConfig`, :class:`~apidistill.config.PolicyConfig`) so a
script and a run file mean the same thing by the same words, and pydantic validates both the
same way. What no run file sets (a custom retry backoff, a token counter for the budget, an
injected Batch API client) lives in :class:`HarvestOptions`.

The keyword arguments ``harvest()`` took before session 6 (``concurrency=``, ``rpm=``,
``batch=``, ...) are refused with a :class:`TypeError` that names their new place, so an old
script fails at once with the fix in the message instead of deep inside the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from apidistill.config import HarvestConfig, PolicyConfig, TeacherConfig
from apidistill.costs.budget import Budget
from apidistill.errors import ConfigError
from apidistill.harvest.retry import RetryPolicy
from apidistill.records import TeacherRequest

if TYPE_CHECKING:  # the teacher SDKs load only when a teacher is built
    from apidistill.policy.schema import Decision
    from apidistill.teachers.base import Teacher
    from apidistill.teachers.batch import BatchClient

__all__ = ["HarvestOptions", "as_budget", "check_removed_kwargs", "teacher_config_of"]

# The keyword arguments harvest() no longer takes → where each one lives now.
_MOVED: dict[str, str] = {
    "concurrency": "config=HarvestConfig(concurrency=...)",
    "rpm": "config=HarvestConfig(rpm=...)",
    "tpm": "config=HarvestConfig(tpm=...)",
    "max_retries": "config=HarvestConfig(max_retries=...)",
    "timeout_s": "config=HarvestConfig(timeout_s=...)",
    "max_requests": "config=HarvestConfig(max_requests=...)",
    "retry_failed": "config=HarvestConfig(retry_failed=[...])",
    "batch": "config=HarvestConfig(use_batch_api=True)",
    "batch_client": "options=HarvestOptions(batch_client=...)",
    "retry_policy": "options=HarvestOptions(retry_policy=...)",
    "count_input_tokens": "options=HarvestOptions(count_input_tokens=...)",
    "rate_window_s": "options=HarvestOptions(rate_window_s=...)",
    "resend_unknown": "options=HarvestOptions(resend_unknown=...)",
    "durable": "options=HarvestOptions(durable=...)",
    "poll_interval_s": "options=HarvestOptions(poll_interval_s=...)",
}

_STRING_PROVIDERS = ("openai", "anthropic")


@dataclass(frozen=True)
class HarvestOptions:
    """Engine settings a run file does not carry; the defaults are what ``apidistill run`` uses.

    ``retry_policy`` replaces the one built from ``HarvestConfig.max_retries``/``timeout_s``
    (e.g. a shorter backoff); ``count_input_tokens`` is the input-token bound the budget
    reserves for (``None``: a rough character count); ``rate_window_s`` is the window that
    ``rpm``/``tpm`` hold in; ``resend_unknown=False`` keeps requests whose earlier send may
    have been billed without an answer out of this run; ``durable=False`` skips fsync (safe
    against crashes, not power loss); ``batch_client`` is the provider Batch API client for
    ``use_batch_api`` (``None``: built from the teacher config); ``poll_interval_s`` is how
    often a batch is polled.
    """

    retry_policy: RetryPolicy | None = None
    count_input_tokens: Callable[[TeacherRequest], int] | None = None
    rate_window_s: float = 60.0
    resend_unknown: bool = True
    durable: bool = True
    batch_client: BatchClient | None = None
    poll_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.rate_window_s <= 0:
            raise ConfigError(f"must be > 0, got {self.rate_window_s!r}", key="rate_window_s")
        if self.poll_interval_s <= 0:
            raise ConfigError(f"must be > 0, got {self.poll_interval_s!r}", key="poll_interval_s")

    def retry_policy_for(self, config: HarvestConfig) -> RetryPolicy:
        """The explicit policy, else the run file's attempts and per-request timeout."""
        return self.retry_policy or RetryPolicy.from_config(config)


def check_removed_kwargs(given: Mapping[str, Any]) -> None:
    """A TypeError naming the new place of every old keyword argument in ``given``."""
    if not given:
        return
    lines = []
    for name in sorted(given):
        where = _MOVED.get(name)
        lines.append(
            f"{name}= moved to {where}" if where else f"{name}= is not an argument of harvest()"
        )
    raise TypeError(
        "harvest() got unexpected keyword argument(s): "
        + "; ".join(lines)
        + " (HarvestConfig and HarvestOptions are importable from apidistill)"
    )


def teacher_config_of(teacher: TeacherConfig | str) -> TeacherConfig:
    """``"openai:gpt-4.1-mini"`` / ``"anthropic:claude-..."`` → a TeacherConfig.

    The provider is always spelled out, never guessed from the model name; an
    OpenAI-compatible server needs its ``base_url``, so it takes a TeacherConfig."""
    if isinstance(teacher, TeacherConfig):
        return teacher
    provider, sep, model = teacher.partition(":")
    if not sep or provider not in _STRING_PROVIDERS or not model:
        raise ConfigError(
            f"teacher {teacher!r} is not 'provider:model'",
            key="teacher",
            hint="write e.g. teacher='openai:gpt-4.1-mini' or 'anthropic:claude-3-5-haiku-latest'; "
            "for an OpenAI-compatible server pass TeacherConfig(provider='openai_compatible', "
            "model=..., base_url=...)",
        )
    return TeacherConfig(provider=provider, model=model)  # type: ignore[arg-type]


def as_budget(budget: Budget | Decimal | float | int | str | None) -> Budget | None:
    """A :class:`Budget` from a Budget or a USD amount (``2.5``, ``"2.50"``); None: no cap."""
    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, Decimal | float | int | str):
        raise ConfigError(
            f"budget must be a Budget or a USD amount, got {type(budget).__name__}",
            key="budget",
        )
    return Budget(budget)


def check_policy(teacher: TeacherConfig | None, policy: PolicyConfig | None) -> Decision | None:
    """The terms check before the first request: the decision, or :class:`PolicyDenied`."""
    if policy is None:
        return None
    if teacher is None:
        raise ConfigError(
            "a policy check needs to know the teacher: pass teacher= as a TeacherConfig "
            "or 'provider:model', not a client object",
            key="policy",
            hint="or check the terms yourself with apidistill.decide_for_teacher and drop policy=",
        )
    from apidistill.policy.engine import decide_for_teacher, enforce

    return enforce(decide_for_teacher(teacher, policy), policy)


def build_teacher(
    teacher: Teacher | TeacherConfig | str, *, timeout_s: float
) -> tuple[Teacher, TeacherConfig | None]:
    """The client for ``teacher`` and its config (None when a ready client was passed)."""
    if isinstance(teacher, TeacherConfig | str):
        from apidistill.teachers import make_teacher

        cfg = teacher_config_of(teacher)
        return make_teacher(cfg, timeout_s=timeout_s), cfg
    return teacher, None
