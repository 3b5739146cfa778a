"""Figures of one broadcast from its viewer samples (pure functions, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Summary:
    peak_viewers: int
    average_viewers: float
    watch_seconds: float
    duration_seconds: float


def summarize(samples: list[tuple[datetime, int]], started_at: datetime, until: datetime) -> Summary:
    """Each sample's count holds until the next sample (the last one until `until`): watch time
    is the area under that step curve, the average is watch time over the broadcast's length
    (nobody is counted before the first sample, which comes one interval after the start)."""
    duration = max((until - started_at).total_seconds(), 0.0)
    watch = 0.0
    for (at, viewers), (next_at, _) in zip(samples, samples[1:] + [(until, 0)]):
        watch += viewers * max((min(next_at, until) - max(at, started_at)).total_seconds(), 0.0)
    peak = max((v for at, v in samples if at <= until), default=0)
    return Summary(
        peak_viewers=peak,
        average_viewers=watch / duration if duration > 0 else 0.0,
        watch_seconds=watch,
        duration_seconds=duration,
    )
