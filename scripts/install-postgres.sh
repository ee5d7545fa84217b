#!/usr/bin/env bash
# Install the PostgreSQL server (Debian `postgresql`) for the storage and e2e tests.
# Idempotent: apt runs only when no /usr/lib/postgresql/*/bin/postgres exists.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    ls /usr/lib/postgresql/*/bin/postgres | head -n 1
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
sudo_cmd=""
if [[ "$(id -u)" != "0" ]]; then sudo_cmd="sudo"; fi
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/postgres | head -n 1
