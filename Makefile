# The README's two commands: `make dev` runs the platform, `make test` runs the tests.
# Both start from nothing: a virtual environment in .venv with everything installed.

VENV ?= .venv
DATA_PLATFORM_HOME ?= $(CURDIR)/.data_platform
# Dagster's own instance (runs, sensor ticks) lives beside the platform's data.
DAGSTER_HOME ?= $(DATA_PLATFORM_HOME)/dagster_home
export DATA_PLATFORM_HOME DAGSTER_HOME

.PHONY: dev test install bench

$(VENV)/.installed: pyproject.toml setup.py $(wildcard data_platform/_native/*.c)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Embedded default: local directory + SQLite, UI on http://127.0.0.1:3000
dev: install
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Unit, integration and end-to-end tests against PostgreSQL on 127.0.0.1:5432 and an
# S3 endpoint the fixtures start; validates docker-compose.yml with `docker compose config`.
test: install
	VENV=$(VENV) bash scripts/install_compose_plugin.sh
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/python benchmarks/run_all.py
