#!/usr/bin/env bash
# The real-agent test tier's clients, each installed outside the repo keyed by version (their pins clash
# with ours): aider (PyPI, its own virtualenv), Codex CLI (npm; its binary ships inside the package) and
# Claude Code (npm; its native binary ships in the platform package, which npm installs as an optional
# dependency — the tests run that binary, so a skipped postinstall does not matter).
# Cold ~3-4 min, then nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
AIDER=0.86.2
PY=${PYTHON:-python3}
VENV=${HOMELAB_CACHE:-$HOME/.cache/homelab}/venvs/aider-$AIDER
if [ ! -f "$VENV/.homelab-ready" ]; then
  echo "install-agents: installing aider-chat $AIDER into $VENV (once; ~2-3 min)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q "aider-chat==$AIDER" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/aider" --version >/dev/null  # fail loudly if the install did not take
  touch "$VENV/.homelab-ready"
fi
"$VENV/bin/aider" --version >/dev/null

CODEX=0.171.0
NPM_DIR=${HOMELAB_CACHE:-$HOME/.cache/homelab}/npm/codex-$CODEX
if [ ! -x "$NPM_DIR/node_modules/.bin/codex" ]; then
  command -v npm >/dev/null || { echo "install-agents: npm is needed for Codex CLI (apt-get install npm)" >&2; exit 1; }
  echo "install-agents: installing @openai/codex $CODEX into $NPM_DIR (once)" >&2
  mkdir -p "$NPM_DIR"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "@openai/codex@$CODEX")
fi
"$NPM_DIR/node_modules/.bin/codex" --version >/dev/null

CLAUDE=2.1.332
CLAUDE_DIR=${HOMELAB_CACHE:-$HOME/.cache/homelab}/npm/claude-code-$CLAUDE
if [ ! -f "$CLAUDE_DIR/.homelab-ready" ]; then
  echo "install-agents: installing @anthropic-ai/claude-code $CLAUDE into $CLAUDE_DIR (once)" >&2
  mkdir -p "$CLAUDE_DIR"
  (cd "$CLAUDE_DIR" && npm install --no-audit --no-fund --silent --ignore-scripts "@anthropic-ai/claude-code@$CLAUDE")
  touch "$CLAUDE_DIR/.homelab-ready"
fi
ls "$CLAUDE_DIR"/node_modules/@anthropic-ai/claude-code-linux-*/ >/dev/null  # the platform binary is there
