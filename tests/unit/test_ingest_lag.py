"""IngestLag (services/ingest/lag.py): bytes and seconds behind the WAL source."""

from __future__ import annotations

import pytest

from services.ingest.lag import SAMPLE_INTERVAL, IngestLag

pytestmark = pytest.mark.unit


def test_caught_up_is_zero_and_nothing_reported_is_zero() -> None:
    lag = IngestLag()
    assert lag.bytes_behind(0) == 0 and lag.seconds_behind(0, now=100.0) == 0.0
    lag.reported(1000, now=10.0)
    assert lag.bytes_behind(1000) == 0 and lag.seconds_behind(1000, now=50.0) == 0.0


def test_seconds_count_from_when_the_oldest_unreached_end_was_reported() -> None:
    lag = IngestLag()
    lag.reported(1000, now=10.0)
    lag.reported(2000, now=11.0)
    lag.reported(3000, now=12.0)
    assert lag.bytes_behind(500) == 2500
    assert lag.seconds_behind(500, now=15.0) == pytest.approx(5.0)   # 1000 waits since 10
    assert lag.seconds_behind(1500, now=15.0) == pytest.approx(4.0)  # 2000 since 11
    assert lag.seconds_behind(3000, now=15.0) == 0.0
    # An end the source reports again (or an older one) changes nothing.
    lag.reported(2500, now=20.0)
    assert lag.bytes_behind(3000) == 0 and lag.seconds_behind(3000, now=21.0) == 0.0


def test_ends_reported_close_together_share_the_older_time() -> None:
    lag = IngestLag()
    lag.reported(1000, now=10.0)
    lag.reported(2000, now=10.0 + SAMPLE_INTERVAL / 2)
    # Past 1000 but not 2000: still behind, and counted from the older report (errs high).
    assert lag.seconds_behind(1500, now=12.0) == pytest.approx(2.0)
    assert lag.seconds_behind(2000, now=12.0) == 0.0
