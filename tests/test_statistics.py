"""Broadcast figures from viewer samples."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sfstream.statistics import summarize

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_step_curve_watch_time_and_average():
    # 0 viewers until the first sample at 10 s, then 4 for 10 s, 10 for 10 s, 2 until 40 s
    s = summarize([(at(10), 4), (at(20), 10), (at(30), 2)], T0, at(40))
    assert s.watch_seconds == pytest.approx(4 * 10 + 10 * 10 + 2 * 10)
    assert s.duration_seconds == 40
    assert s.average_viewers == pytest.approx(160 / 40)
    assert s.peak_viewers == 10


def test_no_samples_and_zero_length():
    s = summarize([], T0, T0)
    assert (s.peak_viewers, s.average_viewers, s.watch_seconds, s.duration_seconds) == (0, 0.0, 0.0, 0.0)


def test_samples_outside_the_broadcast_are_clipped():
    s = summarize([(at(-5), 3), (at(50), 7)], T0, at(40))  # a sample after the end adds nothing
    assert s.watch_seconds == pytest.approx(3 * 40)
    assert s.peak_viewers == 3
