"""The weekly export schedule: early Monday UTC, the week that just ended."""

import dagster as dg

from data_platform.defs.exports.assets import ml_exports_job

# Fixed rather than read from the environment: the code location is this module's import,
# where STYLE.md forbids reading it (see README, "Weekly exports").
EXPORT_HOUR_UTC, EXPORT_MINUTE_UTC = 3, 0

ml_exports_schedule = dg.build_schedule_from_partitioned_job(
    ml_exports_job, name="ml_exports_schedule", hour_of_day=EXPORT_HOUR_UTC, minute_of_hour=EXPORT_MINUTE_UTC,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Mondays at 03:00 UTC: export the ISO week that just ended for every tenant.",
)
