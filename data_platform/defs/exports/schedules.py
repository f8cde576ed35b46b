"""The weekly export schedule: the ISO week that just ended, every tenant, at a time the
deployment chooses.

The time comes from DATA_PLATFORM_EXPORT_AT (`mon 03:00`, UTC, the default), read at
every tick rather than at import: the schedule ticks every 15 minutes and asks for the
week's run once that time has passed. The run key is the week, so each week is asked
for once, and a daemon that was down at the hour catches up at its next tick.
"""

import os
import re
from datetime import UTC, datetime, timedelta

import dagster as dg

from data_platform.defs.exports.assets import ml_exports_job

EXPORT_AT_VAR = "DATA_PLATFORM_EXPORT_AT"
DEFAULT_EXPORT_AT = "mon 03:00"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EXPORT_AT = re.compile(r"(mon|tue|wed|thu|fri|sat|sun) ([01]\d|2[0-3]):([0-5]\d)")


def export_delay(value: str | None) -> timedelta:
    """How long after the week's end (Monday 00:00 UTC) its export is due."""
    text = (value or DEFAULT_EXPORT_AT).strip().lower()
    found = _EXPORT_AT.fullmatch(text)
    if not found:
        raise ValueError(f"{EXPORT_AT_VAR}={value!r}: expected a weekday and a UTC time such as 'mon 03:00'")
    day, hour, minute = found.groups()
    return timedelta(days=_DAYS.index(day), hours=int(hour), minutes=int(minute))


@dg.schedule(
    job=ml_exports_job, cron_schedule="*/15 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING, name="ml_exports_schedule",
    description=f"Exports the ISO week that just ended for every tenant, at {EXPORT_AT_VAR} "
                f"(default {DEFAULT_EXPORT_AT} UTC).",
)
def ml_exports_schedule(context: dg.ScheduleEvaluationContext):
    now = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC)
    this_monday = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=now.weekday())
    delay = export_delay(os.environ.get(EXPORT_AT_VAR))
    # The newest week whose export time has passed (with a delay of up to a week, that may
    # be the week before last, early in the week).
    week_start = this_monday - timedelta(days=7)
    if now < week_start + timedelta(days=7) + delay:
        week_start -= timedelta(days=7)
    partition = week_start.date().isoformat()
    return dg.RunRequest(partition_key=partition, run_key=f"ml_exports:{partition}")
