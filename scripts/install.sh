#!/usr/bin/env bash
# Install what the lab needs into ./.venv, from this repo's own files. Idempotent, and quick when
# nothing changed: the venv is (re)installed only when pyproject.toml differs from the last install.
#   bash scripts/install.sh         what running needs (scripts/up.sh): Mosquitto, the lab's packages
#   bash scripts/install.sh --dev   what the tests need too (scripts/test.sh, .ci/run): the dev tools,
#                                   Debian's Netdata and Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=run
[ "${1:-}" = "--dev" ] && MODE=dev
need=""
command -v mosquitto >/dev/null 2>&1 || need="$need mosquitto"
command -v mosquitto_passwd >/dev/null 2>&1 || need="$need mosquitto"
if [ "$MODE" = dev ]; then
  # real parts only the tests start: Debian's Netdata agent, and a real browser for the dashboards
  command -v netdata >/dev/null 2>&1 || need="$need netdata"
  [ -x /usr/bin/chromium ] || need="$need chromium"
  # the shared-state tests start their own redis-server on a free port (and stop it)
  command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
fi
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
STAMP=.venv/.homelab-installed
KEY="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$have" = "$KEY dev" ] || [ "$have" = "$KEY $MODE" ]; then
  exit 0  # installed from this very pyproject.toml already
fi
echo "install.sh: installing the lab's packages into .venv ($MODE)" >&2
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$MODE" = dev ]; then
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import services.router, openai, anthropic, schemathesis"  # fail loudly if it did not take
else
  # the plot extra too: `homelab usage --plot` works out of the box
  .venv/bin/python -m pip install -q -e '.[plot]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import services.router, matplotlib"  # fail loudly if the install did not take
fi
echo "$KEY $MODE" > "$STAMP"
