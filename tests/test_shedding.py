"""Rung shedding decisions (pure: lags and times in, decisions out)."""
from __future__ import annotations

from sfstream.transcode.shedding import SETTLE, LoadShedder


def test_sheds_the_tallest_rung_one_at_a_time():
    s = LoadShedder(["1080p", "720p", "480p"], max_lag=1.0, restore_after=30.0)
    assert s.observe("480p", 0.1, now=0.0) == []
    assert s.observe("720p", 2.0, now=1.0) == [("1080p", True)]
    assert s.observe("720p", 2.0, now=1.5) == []  # settling: queues drain before the next judgement
    assert s.observe("1080p", 9.0, now=2.0) == []  # a shed rung's late frames say nothing
    assert s.observe("480p", 2.0, now=1.0 + SETTLE) == [("720p", True)]
    assert s.active == ["480p"]
    assert s.observe("480p", 5.0, now=10 + SETTLE) == [("480p", True)]
    assert s.observe("480p", 5.0, now=100.0) == []  # nothing left to shed


def test_restores_the_lowest_shed_rung_after_calm():
    s = LoadShedder(["1080p", "720p", "480p"], max_lag=1.0, restore_after=30.0)
    s.observe("480p", 2.0, now=0.0)
    s.observe("480p", 2.0, now=SETTLE)
    assert s.shed == ["1080p", "720p"]
    assert s.observe("480p", 0.1, now=10.0) == []  # calm starts
    assert s.observe("480p", 0.5, now=20.0) == []  # over a quarter of max_lag: calm broken
    assert s.observe("480p", 0.1, now=21.0) == []
    assert s.observe("480p", 0.1, now=50.0) == []
    assert s.observe("480p", 0.1, now=51.0) == [("720p", False)]
    assert s.active == ["720p", "480p"]
    assert s.observe("720p", 0.1, now=52.0) == []  # the calm clock starts over
    assert s.observe("720p", 0.1, now=82.5) == [("1080p", False)]
    assert s.shed == []
