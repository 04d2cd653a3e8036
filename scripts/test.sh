#!/usr/bin/env bash
# The test command: installs if needed, then runs the whole suite (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash scripts/install.sh
# the real-engine tier: llama.cpp's server, built once into ~/.cache/homelab (cold ~4-6 min, then seconds)
bash scripts/install-engine.sh
# the real-agent tier: aider (PyPI) and Codex CLI (npm), each outside the repo (cold ~3-4 min, then nothing)
bash scripts/install-agents.sh
exec .venv/bin/pytest "$@"
