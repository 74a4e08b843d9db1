"""When a RelaySchedule's runs are due (`core.schedule`), on a fake clock stepped minute by minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.core.schedule import TOO_MANY_MISSED, Cron, InvalidSchedule, UnknownTimeZone, due, run_name

NEW_YORK = ZoneInfo("America/New_York")


def runs_between(cron: Cron, start: datetime, end: datetime, deadline: int | None = None) -> list[datetime]:
    """The runs an operator looking every minute from `start` to `end` would start."""
    started: list[datetime] = []
    last = start
    now = start
    while now < end:
        now += timedelta(minutes=1)
        plan = due(cron, last, now, deadline)
        if plan.scheduled is not None:
            started.append(plan.scheduled)
            last = plan.scheduled
    return started


def local(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")


def test_a_0230_schedule_runs_once_on_the_spring_forward_day_at_0300_local() -> None:
    cron = Cron.parse("30 2 * * *", "America/New_York")
    runs = runs_between(
        cron, datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), datetime(2026, 3, 9, 12, tzinfo=NEW_YORK)
    )
    # 02:30 does not exist on 2026-03-08: the run starts when the clock jumps, once.
    assert [local(r) for r in runs] == ["2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]


@pytest.mark.parametrize("minute_hour", ["30 2", "30 1"])
def test_a_schedule_runs_once_on_the_fall_back_day(minute_hour: str) -> None:
    cron = Cron.parse(f"{minute_hour} * * *", "America/New_York")
    runs = runs_between(
        cron, datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), datetime(2026, 11, 2, 12, tzinfo=NEW_YORK)
    )
    on_the_day = [r for r in runs if r.astimezone(NEW_YORK).date() == datetime(2026, 11, 1).date()]
    # 01:30 happens twice on 2026-11-01 (EDT, then EST): it runs in the first only.
    assert len(on_the_day) == 1
    assert len(runs) == 2


def test_each_minute_of_the_repeated_hour_runs_twice_on_an_every_minute_schedule() -> None:
    cron = Cron.parse("* * * * *", "America/New_York")
    start = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 01:00 EDT
    runs = runs_between(cron, start, start + timedelta(hours=2))
    assert len(runs) == 120 and len(set(runs)) == 120  # elapsed minutes, none skipped or repeated


def test_zone_defaults_to_utc() -> None:
    cron = Cron.parse("0 9 * * *", None)
    plan = due(cron, datetime(2026, 6, 1, 8, tzinfo=UTC), datetime(2026, 6, 1, 9, 0, 5, tzinfo=UTC), None)
    assert plan.scheduled == datetime(2026, 6, 1, 9, tzinfo=UTC)
    assert plan.next_time == datetime(2026, 6, 2, 9, tzinfo=UTC)


def test_nothing_is_due_before_the_first_time_after_creation() -> None:
    cron = Cron.parse("@hourly", "UTC")
    created = datetime(2026, 6, 1, 8, 0, 30, tzinfo=UTC)
    plan = due(cron, created, created + timedelta(minutes=10), None)
    assert plan.scheduled is None and plan.unmet == 0
    assert plan.next_time == datetime(2026, 6, 1, 9, tzinfo=UTC)


def test_missed_runs_catch_up_once_with_the_latest_time() -> None:
    cron = Cron.parse("*/10 * * * *", "UTC")
    last = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    plan = due(cron, last, datetime(2026, 6, 1, 8, 35, tzinfo=UTC), None)
    assert plan.scheduled == datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
    assert plan.unmet == 3 and not plan.too_many_missed


def test_a_run_older_than_the_starting_deadline_is_not_started() -> None:
    cron = Cron.parse("0 * * * *", "UTC")
    last = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
    late = due(cron, last, datetime(2026, 6, 1, 8, 0, 50, tzinfo=UTC), 30)
    assert late.scheduled is None
    in_time = due(cron, last, datetime(2026, 6, 1, 8, 0, 20, tzinfo=UTC), 30)
    assert in_time.scheduled == datetime(2026, 6, 1, 8, tzinfo=UTC)


def test_more_than_a_hundred_missed_times_are_flagged_and_the_count_stays_bounded() -> None:
    cron = Cron.parse("* * * * *", "UTC")
    last = datetime(2025, 6, 1, tzinfo=UTC)
    plan = due(cron, last, datetime(2026, 6, 1, tzinfo=UTC), None)
    assert plan.too_many_missed
    assert plan.unmet == TOO_MANY_MISSED + 1
    assert plan.scheduled == datetime(2026, 6, 1, tzinfo=UTC)
    # A deadline bounds the window, and with it the count.
    assert not due(cron, last, datetime(2026, 6, 1, tzinfo=UTC), 600).too_many_missed


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", datetime(2026, 6, 1, 9, tzinfo=UTC)),
        ("@daily", datetime(2026, 6, 2, tzinfo=UTC)),
        ("@midnight", datetime(2026, 6, 2, tzinfo=UTC)),
        ("@weekly", datetime(2026, 6, 7, tzinfo=UTC)),
        ("@monthly", datetime(2026, 7, 1, tzinfo=UTC)),
        ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@annually", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_macros_mean_what_cronjob_means(macro: str, expected: datetime) -> None:
    assert Cron.parse(macro, None).next_after(datetime(2026, 6, 1, 8, 30, tzinfo=UTC)) == expected


@pytest.mark.parametrize("schedule", ["61 * * * *", "* * *", "0 0 31 2 *", "@reboot", "*/0 * * * *"])
def test_a_bad_cron_string_is_refused_with_its_text(schedule: str) -> None:
    with pytest.raises(InvalidSchedule, match="is not a valid cron expression") as caught:
        Cron.parse(schedule, "UTC")
    assert repr(schedule) in str(caught.value)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", "America/New York"])
def test_an_unknown_time_zone_is_named(zone: str) -> None:
    with pytest.raises(UnknownTimeZone, match="is not a known IANA time zone") as caught:
        Cron.parse("* * * * *", zone)
    assert repr(zone) in str(caught.value)


def test_a_run_is_named_after_its_schedule_and_unix_minute() -> None:
    assert run_name("nightly", datetime(2026, 6, 1, 8, 30, tzinfo=UTC)) == "nightly-29671710"
    assert run_name("nightly", datetime(2026, 6, 1, 4, 30, tzinfo=NEW_YORK)) == "nightly-29671710"
