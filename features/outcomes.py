"""Predictions joined with what happened: the per-user half of the online evaluation.

Owns :class:`Pending` (a window-close prediction waiting for its horizon to pass, with the
user's closed totals when it was made) and :func:`settle`, which, at a later close of the same
user, turns every pending prediction whose horizon has fully passed into an :class:`Outcome`
and keeps the rest, at most ``horizon`` of them (issue 15: "a ring of pending predictions of
at most H entries").

The realised figures are differences of the user's totals over *closed* windows
(:class:`features.state.UserState`'s ``order_days_total`` and ``spend_total``): at the close of
window ``w + H`` they minus the totals at the close of ``w`` are the order days and spend of
windows ``w + 1 .. w + H``, which is the offline target (:mod:`training.origins`: order days,
purchase value, churn = no order day in the horizon). An open window ahead of the close never
counts, so a user's outcome does not depend on when their later events arrived.

Pure: stdlib only, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pending:
    """One window-close prediction whose horizon has not passed yet."""

    window: int
    """Index of the window whose close the prediction was made at."""
    model_version: str
    orders: float
    """Predicted order days over the horizon."""
    spend: float
    """Predicted spend over the horizon."""
    churn: float
    """Predicted probability of no order day in the horizon."""
    order_days_before: float
    """The user's order days over closed windows, through ``window``."""
    spend_before: float
    """The user's spend over closed windows, through ``window``."""
    shadow: bool = False
    """Made by a shadow (candidate) model next to the serving one: evaluated, never emitted."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A prediction and what happened over its horizon."""

    prediction: Pending
    orders: float
    spend: float

    @property
    def churned(self) -> bool:
        return self.orders <= 0.0


def settle(
    pending: Iterable[Pending],
    closed_through: int,
    order_days_total: float,
    spend_total: float,
    horizon: int,
) -> tuple[list[Outcome], list[Pending]]:
    """At a close of the user through window ``closed_through`` (their closed totals as
    given): the outcomes of the predictions whose ``horizon`` windows have all closed, oldest
    first, and the predictions still waiting, oldest first.

    A prediction is settled at the first close at or after ``window + horizon``: a user
    scored at each close is settled exactly at that window; one whose closes skipped windows
    (a dormant customer, closed again only by a later event) is settled late, over the totals
    at that close, which then cover more than the horizon. The caller decides whether such an
    outcome counts (:func:`on_time`).
    """
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    done: list[Outcome] = []
    waiting: list[Pending] = []
    for p in sorted(pending, key=lambda p: (p.window, p.shadow)):
        if p.window + horizon <= closed_through:
            done.append(
                Outcome(p, order_days_total - p.order_days_before, spend_total - p.spend_before)
            )
        else:
            waiting.append(p)
    return done, waiting


def on_time(outcome: Outcome, closed_through: int, horizon: int) -> bool:
    """Whether ``outcome`` was settled at the close of exactly ``window + horizon``, so that
    its figures cover exactly the horizon (what the offline evaluation scores)."""
    return outcome.prediction.window + horizon == closed_through


def remember(pending: Iterable[Pending], new: Pending, horizon: int) -> list[Pending]:
    """The user's pending predictions with ``new`` added: per role (serving, shadow) one per
    window (a re-score of the same window, e.g. after a model swap, replaces the earlier one)
    and at most ``horizon``, the newest kept. With a prediction at every close, ``horizon``
    entries per role are exactly those whose horizon has not passed."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    kept = list(pending)
    if _appends(kept, new, horizon):
        # The usual call: a close after every waiting one, in order and within the bound.
        kept.append(new)
        if sum(1 for p in kept if p.shadow == new.shadow) > horizon:
            oldest = next(i for i, p in enumerate(kept) if p.shadow == new.shadow)
            del kept[oldest]
        return kept
    kept = [p for p in kept if (p.window, p.shadow) != (new.window, new.shadow)]
    kept.append(new)
    kept.sort(key=lambda p: (p.window, p.shadow))
    serving = [p for p in kept if not p.shadow][-horizon:]
    shadow = [p for p in kept if p.shadow][-horizon:]
    return sorted(serving + shadow, key=lambda p: (p.window, p.shadow))


def _appends(kept: list[Pending], new: Pending, horizon: int) -> bool:
    """Whether ``new`` goes after every entry of ``kept``, which is in order and holds at
    most ``horizon`` per role: then adding it is an append and a trim of its own role."""
    last = (-(2**63), False)
    per_role = [0, 0]
    for p in kept:
        key = (p.window, p.shadow)
        if key <= last:
            return False
        last = key
        per_role[p.shadow] += 1
    return last < (new.window, new.shadow) and max(per_role) <= horizon


__all__ = ["Outcome", "Pending", "on_time", "remember", "settle"]
