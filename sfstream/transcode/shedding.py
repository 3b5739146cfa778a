"""When to shed ladder rungs and when to bring them back (pure: fed lags and times).

Latency beats completeness: if a rung's frames come out of its encoder more than
`max_lag` seconds after they arrived (or its queue overflows), the machine cannot encode
the whole ladder in real time, and the most expensive active rung (the tallest) is shed.
One rung at a time, then a few seconds for the queues to drain before judging again.

A shed rung comes back, the lowest first, once every active rung has stayed under a
quarter of `max_lag` for its restore delay (`restore_after`, doubled each time that rung
had to be shed again, up to MAX_BACKOFF: a machine that cannot hold a rung stops
flapping). With every rung shed there is nothing to observe, so `tick()` (called as
source media arrives) counts that time as calm.
"""
from __future__ import annotations

SETTLE = 3.0  # seconds after a change before the next decision
MAX_BACKOFF = 16  # the restore delay grows at most to this many times restore_after


class LoadShedder:
    def __init__(self, rungs: list[str], max_lag: float, restore_after: float) -> None:
        self.order = list(rungs)  # tallest first
        self.max_lag = max_lag
        self.restore_after = restore_after
        self.shed: list[str] = []  # shed rungs, tallest first
        self.dead: set[str] = set()  # failed rungs: never restored
        self._times_shed: dict[str, int] = {}
        self._last_change = float("-inf")
        self._calm_since: float | None = None

    @property
    def active(self) -> list[str]:
        return [r for r in self.order if r not in self.shed and r not in self.dead]

    def fail(self, rung: str) -> None:
        """The rung's encoder failed: out of the ladder for good."""
        self.dead.add(rung)
        if rung in self.shed:
            self.shed.remove(rung)

    def observe(self, rung: str, lag: float, now: float) -> list[tuple[str, bool]]:
        """One encoded frame of `rung` came out `lag` seconds after its source frame arrived.
        Returns the changes to make: (rung, True) to shed it, (rung, False) to restore it."""
        if rung not in self.active:
            return []
        if lag > self.max_lag:
            self._calm_since = None
            if now - self._last_change < SETTLE:
                return []
            victim = self.active[0]
            self.shed.append(victim)
            self.shed.sort(key=self.order.index)
            self._times_shed[victim] = self._times_shed.get(victim, 0) + 1
            self._last_change = now
            return [(victim, True)]
        if lag > self.max_lag / 4:
            self._calm_since = None
            return []
        return self._maybe_restore(now)

    def tick(self, now: float) -> list[tuple[str, bool]]:
        """Time passes with no rung to observe (all shed): that is calm."""
        if self.active or not self.shed:
            return []
        return self._maybe_restore(now)

    def _maybe_restore(self, now: float) -> list[tuple[str, bool]]:
        if self._calm_since is None:
            self._calm_since = now
        if not self.shed or now - self._last_change < SETTLE:
            return []
        back = self.shed[-1]  # the lowest shed rung: cheapest to bring back
        delay = self.restore_after * min(2 ** (self._times_shed.get(back, 1) - 1), MAX_BACKOFF)
        if now - self._calm_since < delay:
            return []
        self.shed.pop()
        self._last_change = now
        self._calm_since = None
        return [(back, False)]
