#!/usr/bin/env bash
# Runs inside the new namespaces (see boot.sh): overlay root, then pivot_root and exec systemd.
set -euo pipefail
share=$1
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
