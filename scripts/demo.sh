#!/usr/bin/env bash
# The main job end to end on one machine: build the demo recipe and a second release of it, then, on
# a real systemd booted in a sandbox (this machine has no systemd as PID 1), set the host up, activate
# the first (the unit starts and is health-checked), activate the second, roll back.
# Needs root. Everything lives under .cache/demo (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
cargo build --release --locked -q -p builder -p activator
B=$PWD/target/release/comfy-build
C=$PWD/target/release/comfyctl
work=$PWD/.cache/demo
mkdir -p "$work"
say() { printf '\n== %s\n' "$*"; }

say "fixture repositories (ComfyUI-shaped app, a custom node, a C extension)"
bash scripts/demo-fixtures.sh >/dev/null
[ -f "$work/release.key" ] || $B keygen --out "$work/release"

say "build release 1 from recipes/demo.toml and its lock"
b1=$($B build recipes/demo.toml --key "$work/release.key" --out "$work/bundles" --cache "$work/cache" --locked --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
$B verify "$b1" --key "$work/release.pub"

say "build release 2 (same recipe, version 0.1.1, sequence 2)"
sed -e 's/^version = "0.1.0"/version = "0.1.1"/' -e 's/^sequence = 1/sequence = 2/' -e 's#\.\./\.cache/demo-fixtures#../demo-fixtures#' \
  recipes/demo.toml >"$work/demo-2.toml"
b2=$($B build "$work/demo-2.toml" --key "$work/release.key" --out "$work/bundles" --cache "$work/cache" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')

say "boot a real systemd in a sandbox (overlay of this machine's root; the host is untouched)"
# The sandbox has its own /tmp: comfyctl travels in the shared directory.
mkdir -p "$work/bin"
cp "$C" "$work/bin/comfyctl"
C=$work/bin/comfyctl
bash tests/sandbox/boot.sh "$work" "$work/sandbox.pid"
pid=$(cat "$work/sandbox.pid")
trap 'bash tests/sandbox/stop.sh "$pid"' EXIT
host() { nsenter -t "$pid" -a "$@"; }

say "comfyctl setup: config, group, service user, data directories, trusted key"
host "$C" setup --target linux-x86_64-cpu --key "$work/release.pub"

say "activate release 1: unpack, switch, start comfyui.service, health check"
host "$C" activate "$b1"
host systemctl is-active comfyui
host "$C" health

say "activate release 2"
host "$C" activate "$b2"

say "roll back"
host "$C" rollback
host "$C" health
host "$C" releases
host "$C" status
