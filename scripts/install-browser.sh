#!/usr/bin/env bash
# Install headless Chromium + chromedriver (Debian) and selenium for the OIDC browser e2e test.
# Idempotent: apt runs only when /usr/bin/chromium or /usr/bin/chromedriver is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    export DEBIAN_FRONTEND=noninteractive
    sudo_cmd=""
    if [[ "$(id -u)" != "0" ]]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# selenium is in pyproject's `test` extra; install it here only into an existing venv.
if [[ -x "$py" ]] && ! "$py" -c 'import selenium' 2>/dev/null; then
    "$py" -m pip install -q --disable-pip-version-check 'selenium>=4.20'
fi

/usr/bin/chromium --version 2>/dev/null || true
