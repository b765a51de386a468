#!/usr/bin/env bash
# Runs inside the new namespaces (see boot.sh): a cgroup of its own, overlay root, then pivot_root
# and exec systemd.
set -euo pipefail
share=$1
if [ "${2:-}" != --in-cgroup ]; then
  # Each sandbox's systemd gets its own cgroup subtree and a cgroup namespace rooted there, so
  # several sandboxes (a fleet of hosts) never see or stop each other's units. stop.sh removes it.
  cg=/sys/fs/cgroup/unified
  [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && cg=/sys/fs/cgroup
  sub=$cg/comfy-sandbox.$(basename "$share").$$
  mkdir "$sub"
  echo 0 >"$sub/cgroup.procs"
  exec unshare --cgroup bash "$0" "$share" --in-cgroup
fi
# The mount point lives in the shared directory: its owner removes it, nothing is left in /tmp.
base=$share/.sandbox
mkdir -p "$base"
mount -t tmpfs -o size=4g tmpfs "$base"
mkdir -p "$base"/{upper,work,root}
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root
mkdir -p "$r/oldroot"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
# A cgroup2 mount made inside the namespace shows only this sandbox's subtree: systemd runs in
# unified mode on it.
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
# After /tmp: the shared directory is usually a test's temp dir under it.
mkdir -p "$r$share"
mount --bind "$share" "$r$share"
cd "$r"
pivot_root . oldroot
umount -l /oldroot
export container=comfy-sandbox
exec /lib/systemd/systemd --system --log-target=kmsg --show-status=no </dev/null >/dev/null 2>&1
