#!/usr/bin/env bash
# Stops a sandbox booted by boot.sh (systemd's exit signal, then SIGKILL after a grace period) and
# removes its cgroup subtree. Usage: stop.sh PID
set -uo pipefail
pid=$1
rel=$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null | head -1)
kill -s SIGRTMIN+4 "$pid" 2>/dev/null || exit 0
for _ in $(seq 1 100); do
  [ -e "/proc/$pid" ] || break
  sleep 0.1
done
kill -9 "$pid" 2>/dev/null
for _ in $(seq 1 50); do
  [ -e "/proc/$pid" ] || break
  sleep 0.1
done
# The sandbox's top cgroup (comfy-sandbox.*), seen from here; emptied once its processes are gone.
top=${rel#/}
top=/${top%%/*}
case "$top" in
  /comfy-sandbox.*)
    cg=/sys/fs/cgroup/unified
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && cg=/sys/fs/cgroup
    [ -d "$cg$top" ] && find "$cg$top" -depth -type d -exec rmdir {} + 2>/dev/null
    ;;
esac
exit 0
