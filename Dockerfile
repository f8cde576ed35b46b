# Production image for the data platform: one image, three roles
# (code-server by default; webserver and daemon override the command in
# docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DATA_PLATFORM_HOME=/opt/dagster/data

RUN groupadd --system --gid 1000 dagster \
 && useradd --system --uid 1000 --gid dagster --home-dir /opt/dagster \
        --no-create-home --shell /usr/sbin/nologin dagster

WORKDIR /opt/dagster/app

# Dependencies first, in their own layer, so that a change to the sources does not
# reinstall pandas & co.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The compiled kernels (setup.py) need a C compiler and OpenSSL's headers to build,
# not to run: both are purged again (libssl3 is part of the base image).
COPY setup.py ./
COPY data_platform ./data_platform
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && pip install --no-deps . \
 && apt-get purge -y --auto-remove gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/* build ./*.egg-info \
 && python -c "from data_platform._native import hmac_kernel, jsonl_kernel, minhash_kernel, neardup_index, pii_scan_kernel, rowhash_kernel"

# Production instance (PostgreSQL) and the gRPC workspace for webserver/daemon.
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/app/workspace.yaml

# Writable state for the non-root user: local artifacts and compute logs
# (a volume shared by the three containers) and the platform home.
RUN mkdir -p ${DAGSTER_HOME}/storage ${DATA_PLATFORM_HOME} \
 && chown dagster:dagster ${DAGSTER_HOME} ${DAGSTER_HOME}/storage ${DATA_PLATFORM_HOME}

# Numeric, so that runAsNonRoot-style checks can verify it (uid of "dagster").
USER 1000:1000

EXPOSE 4000 3000

CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "data_platform.definitions", "--location-name", "data_platform"]
