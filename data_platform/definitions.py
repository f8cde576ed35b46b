"""The code location: assembles the Dagster layer. No logic here."""

import dagster as dg

from data_platform.defs.exports.assets import ml_exports, ml_exports_job
from data_platform.defs.exports.schedules import ml_exports_schedule
from data_platform.defs.features.assets import feature_table_sensor, feature_tables
from data_platform.defs.governance.backups import catalog_backup, catalog_backup_job, catalog_backup_schedule
from data_platform.defs.governance.erasure import erasure, erasure_job
from data_platform.defs.governance.integrity import integrity, integrity_job, integrity_schedule
from data_platform.defs.ingestion.assets import fresh_data
from data_platform.defs.ingestion.sensors import ingest_job, landing_sensor
from data_platform.defs.lifecycle.cleanup import cleanup, cleanup_job, cleanup_schedule
from data_platform.defs.lifecycle.statistics import statistics_job, statistics_schedule, upload_statistics
from data_platform.defs.lifecycle.training import training_set, used_data
from data_platform.defs.io_manager import ObjectStoreIOManager
from data_platform.defs.resources import CatalogResource, ObjectStoreResource

object_store = ObjectStoreResource()

statistics_automation = dg.AutomationConditionSensorDefinition(
    "statistics_automation", target=[upload_statistics, used_data], default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=[fresh_data, training_set, used_data, upload_statistics, cleanup, ml_exports, feature_tables,
            catalog_backup, integrity, erasure],
    jobs=[ingest_job, cleanup_job, statistics_job, ml_exports_job, catalog_backup_job, integrity_job,
          erasure_job],
    sensors=[landing_sensor, statistics_automation, feature_table_sensor],
    schedules=[cleanup_schedule, statistics_schedule, ml_exports_schedule, catalog_backup_schedule,
               integrity_schedule],
    resources={
        "object_store": object_store,
        "catalog": CatalogResource(),
        "object_store_io_manager": ObjectStoreIOManager(object_store=object_store),
    },
)
