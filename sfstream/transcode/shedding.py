"""When to shed ladder rungs and when to bring them back (pure: fed lags and times).

Latency beats completeness: if a rung's frames come out of its encoder more than
`max_lag` seconds after they arrived (or its queue overflows), the machine cannot encode
the whole ladder in real time, and the most expensive active rung (the tallest) is shed.
One rung at a time, then a grace of a few seconds to let the queues drain before judging
again. A shed rung comes back, the lowest first, once every active rung has stayed under
a quarter of `max_lag` for `restore_after` seconds.
"""
from __future__ import annotations

SETTLE = 3.0  # seconds after a change before the next decision


class LoadShedder:
    def __init__(self, rungs: list[str], max_lag: float, restore_after: float) -> None:
        self.order = list(rungs)  # tallest first
        self.max_lag = max_lag
        self.restore_after = restore_after
        self.shed: list[str] = []  # shed rungs, tallest first
        self._last_change = float("-inf")
        self._calm_since: float | None = None

    @property
    def active(self) -> list[str]:
        return [r for r in self.order if r not in self.shed]

    def observe(self, rung: str, lag: float, now: float) -> list[tuple[str, bool]]:
        """One encoded frame of `rung` came out `lag` seconds after its source frame arrived.
        Returns the changes to make: (rung, True) to shed it, (rung, False) to restore it."""
        if rung in self.shed or rung not in self.order:
            return []
        if lag > self.max_lag:
            self._calm_since = None
            if now - self._last_change < SETTLE or not self.active:
                return []
            victim = self.active[0]
            self.shed.insert(0, victim)
            self.shed.sort(key=self.order.index)
            self._last_change = now
            return [(victim, True)]
        if lag > self.max_lag / 4:
            self._calm_since = None
            return []
        if self._calm_since is None:
            self._calm_since = now
        if self.shed and now - self._calm_since >= self.restore_after and now - self._last_change >= SETTLE:
            back = self.shed.pop()  # the lowest shed rung: cheapest to bring back
            self._last_change = now
            self._calm_since = None
            return [(back, False)]
        return []
