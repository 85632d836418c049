"""Schedules: what EventBridge does with rate() and cron() expressions (parsing, next
firing times, the Scheduled Event a firing sends)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from local.template.errors import TemplateError

_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400}
_CRON = re.compile(r"cron\(([^)]*)\)")
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)
}


def next_fire_interval(expression: str) -> float:
    """Seconds between firings of a `rate(...)` expression (`rate(5 minutes)` -> 300.0).

    EventBridge wants the singular unit for 1 and the plural otherwise; so does this.
    """
    match = _RATE.fullmatch(expression.strip())
    if match is None:
        raise TemplateError(f"{expression!r} is not rate(N unit); use cron_next for cron()")
    count, unit = int(match.group(1)), match.group(2)
    if count < 1 or (count == 1) == unit.endswith("s"):
        raise TemplateError(f"{expression!r}: use 'rate(1 minute)' or 'rate(N minutes)', N >= 1")
    return float(count * _RATE_SECONDS[unit.rstrip("s")])


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 6-field EventBridge cron: minutes hours day-of-month month day-of-week year.

    `days_of_month` / `days_of_week` is None where the expression says `?`. Days of week
    are numbered like EventBridge: 1 = SUN ... 7 = SAT.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int]
    days_of_week: frozenset[int] | None
    years: frozenset[int]

    def day_matches(self, day: datetime) -> bool:
        weekday = (day.weekday() + 1) % 7 + 1  # Monday is 0 in Python, 2 in EventBridge
        return (self.days_of_month is None or day.day in self.days_of_month) and (
            self.days_of_week is None or weekday in self.days_of_week
        )


def parse_cron(expression: str) -> CronSchedule:
    """Parse `cron(min hour dom month dow year)`: numbers, names, *, ?, lists, ranges, steps."""
    match = _CRON.fullmatch(expression.strip())
    if match is None:
        raise TemplateError(f"{expression!r} is not cron(...)")
    fields = match.group(1).split()
    if len(fields) != 6:
        raise TemplateError(f"{expression!r}: EventBridge cron has 6 fields, not {len(fields)}")
    minute, hour, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise TemplateError(f"{expression!r}: exactly one of day-of-month, day-of-week is '?'")
    return CronSchedule(
        minutes=_cron_field(minute, 0, 59, {}),
        hours=_cron_field(hour, 0, 23, {}),
        days_of_month=None if day_of_month == "?" else _cron_field(day_of_month, 1, 31, {}),
        months=_cron_field(month, 1, 12, _MONTH_NAMES),
        days_of_week=None if day_of_week == "?" else _cron_field(day_of_week, 1, 7, _DAY_NAMES),
        years=_cron_field(year, 1970, 2199, {}),
    )


def _cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    def number(token: str) -> int:
        token = token.upper()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise TemplateError(f"cron field {text!r}: {token!r} is not a number")
        return int(token)

    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = number(step_text) if slash else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = number(start), number(end)
        else:
            first = number(base)
            last = high if slash else first
        if step < 1 or not low <= first <= last <= high:
            raise TemplateError(f"cron field {text!r} is outside {low}-{high} or malformed")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def cron_next(expression: str, after: datetime) -> datetime:
    """The first firing of a cron() expression strictly after `after` (UTC; naive is UTC)."""
    cron = parse_cron(expression)
    moment = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
    moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    last_year = max(cron.years)
    while moment.year <= last_year:
        if moment.year not in cron.years:
            moment = datetime(moment.year + 1, 1, 1, tzinfo=UTC)
        elif moment.month not in cron.months:
            year, month = divmod(moment.year * 12 + moment.month, 12)  # month is now 0-based
            moment = datetime(year, month + 1, 1, tzinfo=UTC)
        elif not cron.day_matches(moment):
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
        elif moment.hour not in cron.hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0)
        elif moment.minute not in cron.minutes:
            moment += timedelta(minutes=1)
        else:
            return moment
    raise TemplateError(f"{expression!r} never fires after {after.isoformat()}")


def validate_schedule_expression(expression: str) -> None:
    """Raise TemplateError unless `expression` is a valid rate(...) or 6-field cron(...)."""
    if expression.strip().startswith("rate("):
        next_fire_interval(expression)
    else:
        parse_cron(expression)


def next_fire_time(expression: str, after: datetime) -> datetime:
    """The next firing after `after` for either kind of expression (aware UTC)."""
    if expression.strip().startswith("rate("):
        moment = after.replace(tzinfo=UTC) if after.tzinfo is None else after
        return moment + timedelta(seconds=next_fire_interval(expression))
    return cron_next(expression, after)


def scheduled_event(rule_arn: str, time: datetime) -> dict[str, Any]:
    """The event EventBridge sends a Lambda function for a schedule rule firing at `time`."""
    parts = rule_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "events":
        raise TemplateError(f"{rule_arn!r} is not an EventBridge rule ARN")
    moment = time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": parts[4],
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": parts[3],
        "resources": [rule_arn],
        "detail": {},
    }
