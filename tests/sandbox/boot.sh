#!/usr/bin/env bash
# Boots a real systemd as PID 1 of new pid, mount, network and UTS namespaces, on an overlay of the
# host root (writes land in a tmpfs; the host is untouched), and prints its PID on the host once it is
# running. The host directory SHARE is bind-mounted at the same path inside. Stop it with
# tests/sandbox/stop.sh PID. Never boot systemd on the real root: its tmpfiles service empties /tmp.
# Each sandbox has a cgroup namespace of its own (child.sh), so several can run side by side.
# Usage: boot.sh SHARE PIDFILE
set -euo pipefail
share=$(realpath "$1")
pidfile=$2
here=$(cd "$(dirname "$0")" && pwd)
unshare --pid --fork --mount --net --uts --propagation private bash "$here/child.sh" "$share" &
launcher=$!
for _ in $(seq 1 200); do
  # systemd (PID 1 inside) is the child `unshare --fork` made.
  pid=$(pgrep -P "$launcher" | head -1 || true)
  if [ -n "${pid:-}" ] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */systemd/systemd ]]; then
    state=$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)
    case "$state" in
      running|degraded) echo "$pid" >"$pidfile"; exit 0 ;;
    esac
  fi
  sleep 0.1
done
echo "systemd did not reach running in the sandbox" >&2
exit 1
