"""The hard USD budget: reserve the worst case before a send, settle to the actual after.

A request is sent only after its worst-case cost (every input token uncached, ``max_tokens``
out) is reserved, and the reservation fails with :class:`BudgetExceeded` — nothing sent —
when ``spent + at risk + reserved + worst case`` would pass the limit. So no interleaving of
concurrent requests can spend more than the limit as long as the worst case holds. The
harvest makes it hold: it reserves for an input bound the teacher's usage cannot exceed
(:meth:`apidistill.costs.tokens.TokenCounter.bound`), and an answer whose usage is outside
that bound is flagged and stops the run (:mod:`apidistill.costs.usage_check`).

"At risk" is money that may have been billed without an answer reaching us (a transport
fault after sending, or a crash): it stays charged at its worst case, for the rest of the
run and after a resume, because nothing can prove it was not billed.

Unpriced models (``allow_unpriced: true``): costs are ``None``, a USD limit cannot be
enforced, and the budget only counts requests (``requests_reserved``/``requests_settled``);
the caller should warn the user.

Safe to share between asyncio tasks (no method awaits) and between threads (one lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

from apidistill.errors import BudgetExceeded, ConfigError

__all__ = ["Budget", "format_usd", "to_usd"]

_ZERO = Decimal(0)


def to_usd(value: Decimal | int | float | str, *, name: str = "budget") -> Decimal:
    """A non-negative Decimal from user input (floats go through ``str`` to stay exact)."""
    try:
        out = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        raise ConfigError(f"not a number: {value!r}", key=name) from None
    if not out.is_finite() or out < 0:
        raise ConfigError(f"must be a finite amount >= 0 USD, got {value!r}", key=name)
    return out


def _utc_today() -> date:
    return datetime.now(UTC).date()


def format_usd(x: Decimal) -> str:
    """Dollars for people, never rounded to nothing: ``$1,234.57``, ``$0.0040``,
    ``$0.000133``. Below $1 at least 4 decimals and always 3 significant digits, so a
    fraction of a cent reads as what it is (a $0.0001 daily cap's spend is not "$0.0000")."""
    if abs(x) >= 1:
        return f"${x:,.2f}"
    if x == 0:
        return "$0.00"
    places = max(4, 2 - x.adjusted())
    text = f"{x:.{places}f}"
    keep = len(text) - (places - 4)  # trailing zeros go, down to 4 decimals
    return "$" + text[:keep] + text[keep:].rstrip("0")


class Budget:
    """A hard cap in USD for one run (its journal), with an optional per-day cap.

    ``already_spent`` and ``at_risk`` are what earlier runs of the same journal spent and
    left at risk; the harvest engine sets them from the journal with :meth:`restore`.
    """

    def __init__(
        self,
        limit: Decimal | int | float | str,
        *,
        already_spent: Decimal | int | str = 0,
        at_risk: Decimal | int | str = 0,
        per_day: Decimal | int | float | str | None = None,
        spent_today: Decimal | int | str = 0,
        today: Callable[[], date] = _utc_today,
    ) -> None:
        self.limit = to_usd(limit, name="budget.usd")
        self.per_day = None if per_day is None else to_usd(per_day, name="budget.per_day_usd")
        self._today = today
        self._lock = threading.Lock()
        self._history_spent = to_usd(already_spent, name="already_spent")
        self._history_at_risk = to_usd(at_risk, name="at_risk")
        self._spent = _ZERO  # settled in this process
        self._at_risk = _ZERO  # became at risk in this process
        self._reserved = _ZERO
        self._reservations: dict[str, tuple[Decimal | None, date]] = {}
        self._day = today()
        self._day_committed = to_usd(spent_today, name="spent_today")
        self.requests_reserved = 0
        self.requests_settled = 0
        self.unpriced = False  # set once a request without a price was reserved

    # -------------------------------------------------------------- properties

    @property
    def spent(self) -> Decimal:
        """Settled cost of answered requests (earlier runs included)."""
        return self._history_spent + self._spent

    @property
    def at_risk(self) -> Decimal:
        """Worst cases of sends whose outcome is unknown (charged until proven otherwise)."""
        return self._history_at_risk + self._at_risk

    @property
    def reserved(self) -> Decimal:
        """Worst cases of requests in flight now."""
        return self._reserved

    @property
    def committed(self) -> Decimal:
        return self.spent + self.at_risk + self._reserved

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.committed

    @property
    def spent_this_run(self) -> Decimal:
        return self._spent

    def holds(self, key: str) -> bool:
        """Whether ``key`` holds a reservation (priced or not)."""
        return key in self._reservations

    def reservation(self, key: str) -> Decimal | None:
        entry = self._reservations.get(key)
        return None if entry is None else entry[0]

    # ---------------------------------------------------------------- changes

    def restore(self, *, spent: Decimal, at_risk: Decimal, spent_today: Decimal = _ZERO) -> None:
        """Set what earlier runs spent and left at risk (from the journal)."""
        with self._lock:
            self._history_spent = spent
            self._history_at_risk = at_risk
            self._day = self._today()
            self._day_committed = spent_today + self._day_outstanding()

    def _day_outstanding(self) -> Decimal:
        return sum(
            (w for w, d in self._reservations.values() if w is not None and d == self._day),
            _ZERO,
        )

    def _roll_day(self) -> None:
        today = self._today()
        if today != self._day:
            self._day = today
            self._day_committed = _ZERO  # yesterday's reservations count to yesterday

    def reserve(self, key: str, worst_case: Decimal | None) -> None:
        """Hold ``worst_case`` for ``key``; raise :class:`BudgetExceeded` if it does not fit.

        ``worst_case=None`` (unpriced model) reserves nothing in USD and only counts.
        """
        with self._lock:
            if key in self._reservations:
                raise ValueError(f"request {key[:12]} already holds a reservation")
            self._roll_day()
            if worst_case is None:
                self.unpriced = True
                self._reservations[key] = (None, self._day)
                self.requests_reserved += 1
                return
            if worst_case < 0:
                raise ValueError(f"worst case must be >= 0, got {worst_case}")
            if self.committed + worst_case > self.limit:
                raise BudgetExceeded(
                    f"the next request may cost up to {format_usd(worst_case)}, but only "
                    f"{format_usd(max(self.remaining, _ZERO))} of the {format_usd(self.limit)} budget is "
                    f"left (spent {format_usd(self.spent)}, at risk {format_usd(self.at_risk)}, "
                    f"in flight {format_usd(self._reserved)}); nothing was sent for it",
                    hint="raise the budget (budget.usd or --budget) and run again with the "
                    "same journal: answered requests are never sent again",
                )
            if self.per_day is not None and self._day_committed + worst_case > self.per_day:
                raise BudgetExceeded(
                    f"the per-day budget of {format_usd(self.per_day)} is used up for "
                    f"{self._day.isoformat()} (UTC; {format_usd(self._day_committed)} committed)",
                    hint="run again tomorrow (UTC) with the same journal, or raise "
                    "budget.per_day_usd",
                )
            self._reservations[key] = (worst_case, self._day)
            self._reserved += worst_case
            self._day_committed += worst_case
            self.requests_reserved += 1

    def adopt(self, key: str, worst_case: Decimal | None) -> None:
        """Take over a reservation an earlier run made for work already at the provider
        (a submitted batch): it counts against the budget but is never refused."""
        with self._lock:
            if key in self._reservations:
                return
            self._roll_day()
            self._reservations[key] = (worst_case, self._day)
            if worst_case is not None:
                self._reserved += worst_case
            else:
                self.unpriced = True
            self.requests_reserved += 1

    def _pop(self, key: str) -> tuple[Decimal | None, date]:
        try:
            return self._reservations.pop(key)
        except KeyError:
            raise ValueError(f"request {key[:12]} holds no reservation") from None

    def settle(self, key: str, actual: Decimal | None) -> None:
        """The answer arrived: charge ``actual`` instead of the reservation."""
        with self._lock:
            worst, day = self._pop(key)
            self.requests_settled += 1
            if worst is not None:
                self._reserved -= worst
                if day == self._day:
                    self._day_committed -= worst
            if actual is None:
                return
            self._spent += actual
            self._roll_day()
            self._day_committed += actual

    def release(self, key: str) -> None:
        """Nothing was billed (not sent, or refused before any work): free the reservation."""
        with self._lock:
            worst, day = self._pop(key)
            if worst is not None:
                self._reserved -= worst
                if day == self._day:
                    self._day_committed -= worst

    def mark_at_risk(self, key: str) -> Decimal | None:
        """The send's outcome is unknown: its reservation stays charged, as at risk.

        Returns the amount; the key holds no reservation afterwards (reserve again before a
        re-send)."""
        with self._lock:
            worst, _day = self._pop(key)
            if worst is not None:
                self._reserved -= worst
                self._at_risk += worst
            return worst

    def settle_at_risk(self, actual: Decimal | None, released: Decimal) -> None:
        """An at-risk send's answer was found after all (e.g. the provider's stored copy):
        charge ``actual`` instead of the ``released`` worst case it was held at. The worst
        case comes off this run's at-risk money first, then earlier runs'."""
        with self._lock:
            self.requests_settled += 1
            here = min(self._at_risk, released)
            self._at_risk -= here
            self._history_at_risk -= min(self._history_at_risk, released - here)
            if actual is None:
                return
            self._spent += actual
            self._roll_day()
            self._day_committed += actual

    def __repr__(self) -> str:
        return (
            f"Budget(limit={self.limit}, spent={self.spent}, at_risk={self.at_risk}, "
            f"reserved={self._reserved})"
        )
