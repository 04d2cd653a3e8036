#!/usr/bin/env bash
# The test command: installs if needed, then runs the whole suite (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash scripts/install.sh
exec .venv/bin/pytest "$@"
