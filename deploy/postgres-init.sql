-- Run once by the postgres image on an empty data directory
-- (/docker-entrypoint-initdb.d). POSTGRES_DB already creates "dagster" (the
-- Dagster instance: runs, event logs, schedules); this adds the platform's
-- catalog database, owned by the same role (POSTGRES_USER).
CREATE DATABASE catalog;
