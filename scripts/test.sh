#!/usr/bin/env bash
# The test command: installs if needed, then runs the whole suite (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev  # quick when nothing changed
# the real-engine tier: llama.cpp's server, built once into ~/.cache/homelab (cold ~5-10 min, then seconds)
bash scripts/install-engine.sh
# the real-agent tier: aider (PyPI) and Codex CLI (npm), each outside the repo (cold ~3-4 min, then nothing)
bash scripts/install-agents.sh
# the real-Home-Assistant tier: HA 2025.4.4 on Python >= 3.13, outside the repo (cold ~2-4 min, ~1.5 GB)
bash scripts/install-ha.sh
exec .venv/bin/pytest "$@"
