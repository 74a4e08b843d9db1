"""When a RelaySchedule's next run is due, by CronJob's rules, from a clock the caller passes in.

A schedule is a cron expression read in a time zone: cronsim iterates it in local time and
settles DST the way Debian's cron does (a 02:30 run on a spring-forward day starts at 03:00, once;
on a fall-back day an hour that occurs twice runs in its first occurrence only). Every instant
that leaves this module is in UTC.

The catch-up rule is CronJob's: of the schedule times since the last run (or since the schedule
was created) and no older than `startingDeadlineSeconds`, only the most recent one runs; the older
ones are missed, and more than `TOO_MANY_MISSED` of them is worth a warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# The macros CronJob accepts, as the five fields they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
TOO_MANY_MISSED = 100
DEFAULT_ZONE = "UTC"


class InvalidSchedule(ValueError):
    """`spec.schedule` is no cron expression that ever fires."""


class UnknownTimeZone(ValueError):
    """`spec.timeZone` names no zone in the IANA database zoneinfo reads."""


@dataclass(frozen=True)
class Cron:
    expression: str
    zone: ZoneInfo

    @classmethod
    def parse(cls, schedule: str, zone: str | None) -> Cron:
        name = zone or DEFAULT_ZONE
        try:
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise UnknownTimeZone(f"timeZone {name!r} is not a known IANA time zone") from None
        text = schedule.strip()
        expression = MACROS.get(text.lower(), text)
        try:
            # Built once to validate: cronsim checks the fields as it is constructed, and finds
            # whether the expression ever matches (`0 0 31 2 *` does not) as it first iterates.
            next(CronSim(expression, datetime(2000, 1, 1, tzinfo=tz)))
        except (CronSimError, StopIteration) as error:
            raise InvalidSchedule(f"schedule {schedule!r} is not a valid cron expression: {error}") from None
        return cls(expression, tz)

    def latest_at_or_before(self, moment: datetime) -> datetime:
        # cronsim's reverse iteration yields times strictly before its start; schedule times are
        # whole seconds, so starting one second after `moment` includes `moment` itself.
        start = moment.replace(microsecond=0) + timedelta(seconds=1)
        return next(CronSim(self.expression, start.astimezone(self.zone), reverse=True)).astimezone(UTC)

    def times_after(self, moment: datetime) -> Iterable[datetime]:
        """The schedule times strictly after `moment`, in order."""
        for local in CronSim(self.expression, moment.astimezone(self.zone)):
            yield local.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        return next(iter(self.times_after(moment)))


@dataclass(frozen=True)
class Due:
    """What a schedule owes at `now`: `scheduled` is the time of the run to start now, if any;
    `unmet` counts the schedule times it stands for (1 when on time, more when runs were missed);
    `next_time` is the first schedule time after now, when to look again at the latest."""

    scheduled: datetime | None
    unmet: int
    next_time: datetime

    @property
    def too_many_missed(self) -> bool:
        return self.unmet > TOO_MANY_MISSED


def due(cron: Cron, since: datetime, now: datetime, starting_deadline_seconds: int | None) -> Due:
    """The run due at `now`, given the last scheduled time (or the schedule's creation) `since`.

    A schedule time counts while it is after `since`, at or before `now`, and no more than
    `starting_deadline_seconds` ago; the most recent such time is the one to run.
    """
    earliest = since
    if starting_deadline_seconds is not None:
        earliest = max(earliest, now - timedelta(seconds=starting_deadline_seconds))
    next_time = cron.next_after(now)
    latest = cron.latest_at_or_before(now)
    if latest <= earliest:
        return Due(None, 0, next_time)
    unmet = 0
    # Counted forwards and bounded: a schedule idle for a year would otherwise count every minute.
    for moment in cron.times_after(earliest):
        if moment > latest or unmet > TOO_MANY_MISSED:
            break
        unmet += 1
    return Due(latest, unmet, next_time)


def run_name(schedule: str, scheduled: datetime) -> str:
    """`<schedule>-<scheduled unix minute>`: the same name for the same run on every replica."""
    return f"{schedule}-{int(scheduled.timestamp()) // 60}"


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as the API server writes them, or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
