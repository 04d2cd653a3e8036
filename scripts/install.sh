#!/usr/bin/env bash
# Install everything the lab needs into ./.venv, from this repo's own files (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Real parts the tests start: Mosquitto (broker) and Debian's Netdata agent.
need=""
command -v mosquitto >/dev/null 2>&1 || need="$need mosquitto"
command -v mosquitto_passwd >/dev/null 2>&1 || need="$need mosquitto"
command -v netdata >/dev/null 2>&1 || need="$need netdata"
# what a person sees is tested in a real browser: Debian's chromium, headless
[ -x /usr/bin/chromium ] || need="$need chromium"
if [ -n "$need" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    # the package starts a system netdata on :19999; the tests start their own
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now netdata >/dev/null 2>&1 || true; fi
  else
    echo "install.sh: please install:$need (Debian: apt-get install$need)" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import services.router, openai" # fail loudly if the install did not take
