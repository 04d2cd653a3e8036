#!/usr/bin/env bash
# The real-Home-Assistant test tier: Home Assistant 2025.4.4 (the newest that installs on Python 3.13.0)
# in a virtualenv outside the repo, keyed by version, with the requirements of every integration the
# tests load pre-installed (Home Assistant then starts with --skip-pip). Cold ~2-4 min, ~1.5 GB; then
# nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
HA=2025.4.4
VENV=${HOMELAB_CACHE:-$HOME/.cache/homelab}/venvs/ha-$HA
# the integrations the tier's configuration loads (their dependencies are followed)
DOMAINS="frontend mqtt rest notify automation script input_text input_boolean input_datetime
persistent_notification system_log image event sensor binary_sensor lovelace config http api logger
blueprint homeassistant history recorder"

if [ -x "$VENV/bin/hass" ] && [ "$(cat "$VENV/.homelab-ready" 2>/dev/null)" = "$(echo $DOMAINS)" ]; then
  exit 0
fi
PY=""
for cand in ${HOMELAB_HA_PYTHON:-} python3.14 python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3 \
            /usr/bin/python3.13 /usr/local/bin/python3.13; do
  if [ -n "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
    PY=$cand
    break
  fi
done
if [ -z "$PY" ]; then
  echo "install-ha: Home Assistant $HA needs Python >= 3.13: install one (pyenv install 3.13, or apt)" \
       "or set HOMELAB_HA_PYTHON" >&2
  exit 1
fi
echo "install-ha: Home Assistant $HA with $PY into $VENV (once; ~2-4 min, ~1.5 GB)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q "homeassistant==$HA" 2>&1 | grep -v '^WARNING: Location' || true
REQS=$("$VENV/bin/python" - $DOMAINS <<'PY'
import json, sys
from pathlib import Path
import homeassistant.components as c
root = Path(c.__file__).parent
todo, seen, reqs = list(sys.argv[1:]), set(), set()
while todo:
    d = todo.pop()
    if d in seen or not (root / d / "manifest.json").exists():
        continue
    seen.add(d)
    m = json.loads((root / d / "manifest.json").read_text())
    reqs.update(m.get("requirements", []))
    todo += m.get("dependencies", [])
print(" ".join(sorted(reqs)))
PY
)
if [ -n "$REQS" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $REQS 2>&1 | grep -v '^WARNING: Location' || true
fi
"$VENV/bin/hass" --version >/dev/null
echo $DOMAINS > "$VENV/.homelab-ready"
