#!/usr/bin/env bash
# The embedded default: install, then run the lab on loopback (simulated upstreams + router).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/homelab up "$@"
