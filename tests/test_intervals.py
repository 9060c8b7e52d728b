"""jobs/intervals.py: the driver's polling periods, their defaults, and LINEGEN_INTERVALS."""
from __future__ import annotations

import pytest

from linegen.errors import UserError
from linegen.jobs.intervals import INTERVALS, Intervals, parse_intervals


def test_defaults_are_the_products() -> None:
    d = Intervals()
    assert (d.worker_poll_s, d.nodes_every_s, d.report_every_s) == (1.0, 2.0, 1.0)
    assert (d.live_every_s, d.live_stale_s, d.after_poll_s, d.after_ray_check_s) == (3.0, 30.0, 3.0, 30.0)
    assert parse_intervals("") == d


def test_overrides_apply_and_keep_the_rest() -> None:
    got = parse_intervals(" live_every_s=0.5 , after_poll_s = 0.25,")
    assert got == Intervals(live_every_s=0.5, after_poll_s=0.25)


@pytest.mark.parametrize("text, words", [
    ("live_every=1", "not NAME=SECONDS"), ("live_every_s", "not NAME=SECONDS"),
    ("live_every_s=0", "not a positive number"), ("after_poll_s=-1", "not a positive number"),
    ("after_poll_s=soon", "not a positive number"), ("after_poll_s=nan", "not a positive number"),
    ("after_poll_s=inf", "not a positive number"),
])
def test_bad_pairs_are_one_line_errors(text: str, words: str) -> None:
    with pytest.raises(UserError) as e:
        parse_intervals(text)
    assert words in str(e.value) and "LINEGEN_INTERVALS" in str(e.value) and "\n" not in str(e.value)


def test_the_job_modules_read_the_setting() -> None:
    """tests/conftest.py sets LINEGEN_INTERVALS for the session; every module takes its period from it."""
    from linegen.jobs import pool, progress, schedule, tally

    assert INTERVALS.live_every_s == 0.5 and INTERVALS.after_poll_s == 0.25  # the suite's setting
    assert (pool.POLL_S, pool.NODES_EVERY_S) == (INTERVALS.worker_poll_s, INTERVALS.nodes_every_s)
    assert (progress.LIVE_EVERY_S, progress.LIVE_STALE_S) == (INTERVALS.live_every_s, INTERVALS.live_stale_s)
    assert (schedule.POLL_S, schedule.RAY_CHECK_S) == (INTERVALS.after_poll_s, INTERVALS.after_ray_check_s)
    assert tally.REPORT_EVERY_S == INTERVALS.report_every_s
