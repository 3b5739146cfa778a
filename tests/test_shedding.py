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


def test_all_rungs_shed_come_back_through_ticks():
    s = LoadShedder(["720p", "480p"], max_lag=1.0, restore_after=30.0)
    assert s.observe("480p", 5.0, now=0.0) == [("720p", True)]
    assert s.observe("480p", 5.0, now=SETTLE) == [("480p", True)]
    assert s.active == [] and s.observe("480p", 0.0, now=100.0) == []  # shed rungs say nothing
    assert s.tick(now=SETTLE + 1) == []  # calm starts
    assert s.tick(now=SETTLE + 31) == [("480p", False)]
    assert s.tick(now=SETTLE + 100) == []  # a rung is active again: its frames decide


def test_a_rung_shed_again_waits_longer_and_dead_rungs_never_return():
    s = LoadShedder(["720p", "480p"], max_lag=1.0, restore_after=10.0)
    assert s.observe("480p", 5.0, now=0.0) == [("720p", True)]
    s.observe("480p", 0.1, now=5.0)
    assert s.observe("480p", 0.1, now=15.0) == [("720p", False)]  # 10 s of calm
    assert s.observe("720p", 5.0, now=20.0) == [("720p", True)]  # shed a second time
    s.observe("480p", 0.1, now=25.0)
    assert s.observe("480p", 0.1, now=35.0) == []  # 10 s is no longer enough
    assert s.observe("480p", 0.1, now=45.0) == [("720p", False)]  # 20 s is
    s.fail("480p")
    assert s.active == ["720p"] and s.observe("480p", 9.0, now=100.0) == []
    assert s.observe("720p", 9.0, now=100.0) == [("720p", True)]
    assert s.tick(now=1000.0) == []  # calm starts: shed three times, 720p now waits 4 x 10 s
    assert s.tick(now=1039.0) == []
    assert s.tick(now=1040.0) == [("720p", False)]  # only 720p comes back; 480p is dead
    assert s.shed == []
