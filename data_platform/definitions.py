"""The code location: assembles the Dagster layer. No logic here."""

import dagster as dg

from data_platform.defs.ingestion.assets import fresh_data, upload_statistics
from data_platform.defs.ingestion.sensors import ingest_job, landing_sensor
from data_platform.defs.io_manager import ObjectStoreIOManager
from data_platform.defs.resources import CatalogResource, ObjectStoreResource

object_store = ObjectStoreResource()

statistics_automation = dg.AutomationConditionSensorDefinition(
    "statistics_automation", target=[upload_statistics], default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=[fresh_data, upload_statistics],
    jobs=[ingest_job],
    sensors=[landing_sensor, statistics_automation],
    resources={
        "object_store": object_store,
        "catalog": CatalogResource(),
        "object_store_io_manager": ObjectStoreIOManager(object_store=object_store),
    },
)
