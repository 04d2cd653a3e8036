#!/usr/bin/env bash
# CUDA recovery on a GPU host whose fresh cuInit fails (error 999 after an eGPU link flap or suspend)
# while nvidia-smi still works: stop the GPU consumers, reload nvidia_uvm, start them again.
# Consumers: HOMELAB_GPU_UNITS (systemd user units) and/or HOMELAB_GPU_CONTAINERS (docker containers).
set -euo pipefail
units=${HOMELAB_GPU_UNITS:-}
containers=${HOMELAB_GPU_CONTAINERS:-}
log() { printf '%s recover-cuda: %s\n' "$(date -Is)" "$*"; }

for u in $units; do log "stopping unit $u"; systemctl --user stop "$u"; done
for c in $containers; do log "stopping container $c"; docker stop "$c" >/dev/null; done

log "reloading nvidia_uvm"
for attempt in 1 2 3 4 5; do
  if sudo -n rmmod nvidia_uvm 2>/dev/null || ! lsmod | grep -q '^nvidia_uvm'; then break; fi
  log "nvidia_uvm busy (attempt $attempt); waiting"; sleep 2
done
sudo -n modprobe nvidia_uvm

if ! "${HOMELAB_BIN:-homelab}" cuda-probe; then
  log "cuInit still fails after the reload: page the operator"; status=1
else
  status=0
fi

for c in $containers; do log "starting container $c"; docker start "$c" >/dev/null; done
for u in $units; do log "starting unit $u"; systemctl --user start "$u"; done
exit $status
