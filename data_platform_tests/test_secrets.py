"""Secrets stay secret: after ingestion (with personal data pseudonymised), a training
set and a cleanup run through Dagster, neither the pseudonym key nor the S3 secret key
appears in any event, log line, run config or metadata, nor in the CLI's output."""

import json
import os

import dagster as dg

from data_platform import cli
from data_platform.defs.ingestion.assets import fresh_data
from data_platform.defs.ingestion.sensors import landing_sensor
from data_platform.defs.lifecycle.cleanup import cleanup
from data_platform.defs.lifecycle.training import training_set
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform_tests.support import jsonl

S3_SECRET = "Zq9-s3-secret-that-must-never-show"


def test_no_secret_reaches_events_logs_run_config_metadata_or_the_cli(s3_store, pg_catalog_url, monkeypatch,
                                                                      capsys):
    key = os.environ["DATA_PLATFORM_PSEUDONYM_KEY"]  # set for the whole test session by conftest
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)  # moto accepts any credentials
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    s3_store.put_bytes("landing/acme/tickets/day1.jsonl", jsonl(
        [{"id": i, "email": f"person{i}@example.org", "note": f"call 10.0.0.{i} or mail person{i}@example.org"}
         for i in range(30)]))
    resources = {"object_store": ObjectStoreResource(), "catalog": CatalogResource()}
    with dg.instance_for_test() as instance:
        tick = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        for request in tick.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        runs = [dg.materialize([fresh_data], partition_key=r.partition_key, instance=instance, resources=resources)
                for r in tick.run_requests]
        runs.append(dg.materialize([training_set], instance=instance, resources=resources,
                                   run_config={"ops": {"training_set": {"config": {"tenant": "acme"}}}}))
        runs.append(dg.materialize([cleanup], instance=instance, resources=resources,
                                   run_config={"ops": {"cleanup": {"config": {"dry_run": True}}}}))
        assert all(r.success for r in runs)
        seen = []
        for run in runs:
            seen.append(json.dumps(instance.get_run_by_id(run.run_id).run_config, default=str))
            for entry in instance.all_logs(run.run_id):
                seen.append(str(entry))  # the whole event: messages, metadata, check results
        for name in ("status", "stats", "training-set"):
            capsys.readouterr()
            args = [name, "--json"] if name != "training-set" else [name, "list", "--json"]
            assert cli.main(args) == 0
            seen.append(capsys.readouterr().out)
    text = "\n".join(seen)
    assert "pseudonymised_values" in text or "pii_columns" in text  # the events were really read
    assert key not in text and S3_SECRET not in text
    assert "person3@example.org" not in text  # and no raw personal data either
