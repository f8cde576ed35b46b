"""The Dagster layer: resources, assets, sensors and schedules wired to the domain core."""
