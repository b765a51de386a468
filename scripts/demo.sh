#!/usr/bin/env bash
# The main job end to end on one machine, with the real ComfyUI v0.3.64 and five real custom nodes
# (ComfyUI-Manager, KJNodes, rgthree, Custom-Scripts, essentials) and ComfyUI-Impact-Pack with its
# pinned subpack on PyPI's torch 2.9.1 (`--cpu`):
# build release 1 and a release 2 that moves KJNodes to its next upstream commit; then, on a real
# systemd booted in a sandbox (this machine has no systemd as PID 1; the host is untouched), set
# the host up, activate release 1 (the unit starts as the service user; every node's classes are
# checked), activate release 2 from a URL (a delta: only the changed frames are downloaded), roll back.
# Sources: ../shared/upstream's git bundles; COMFY_SOURCES=github builds the same upstream commits
# from GitHub instead. Needs root and about 40 GB of disk. Build caches stay in .cache/build (the
# tests share them); the sandbox's /opt/comfyui and the bundles are removed at the end
# (KEEP=1 keeps them in .cache/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
cargo build --release --locked -q -p builder -p activator
B=$PWD/target/release/comfy-build
C=$PWD/target/release/comfyctl
cache=$PWD/.cache/build
work=$PWD/.cache/demo
mkdir -p "$work"
t0=$SECONDS
say() { printf '\n== [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
[ -f "$work/release.key" ] || $B keygen --out "$work/release"
rm -rf "$work/www" "$work/opt"
mkdir -p "$work/www" "$work/opt" "$work/bin"
build() {
  $B lock "$1" --cache "$cache" >&2
  $B build "$1" --key "$work/release.key" --out "$work/bundles" --cache "$cache" --locked --json | json 'd["path"]'
}

say "release 1: recipe and lock (sources: ${COMFY_SOURCES:-bundles})"
r1=$(bash scripts/comfyui-recipe.sh 1 "$work/recipes")
b1=$(build "$r1")
$B inspect "$b1"

say "release 2: the same recipe with ComfyUI-KJNodes at its next commit"
r2=$(bash scripts/comfyui-recipe.sh 2 "$work/recipes")
b2=$(build "$r2")
$B verify "$b2" --key "$work/release.pub"
ln -f "$b2" "$work/www/comfyui-2.bundle"

say "boot a real systemd in a sandbox (an overlay of this machine's root); /opt/comfyui on disk"
# The sandbox has its own /tmp: comfyctl travels in the shared directory.
cp "$C" "$work/bin/comfyctl"
C=$work/bin/comfyctl
bash tests/sandbox/boot.sh "$work" "$work/sandbox.pid"
pid=$(cat "$work/sandbox.pid")
cleanup() {
  bash tests/sandbox/stop.sh "$pid"
  [ "${KEEP:-}" = 1 ] || rm -rf "$work/opt" "$work/www" "$work/bundles"
}
trap cleanup EXIT
host() { nsenter -t "$pid" -a "$@"; }
host mkdir -p /opt/comfyui
host mount --bind "$work/opt" /opt/comfyui
# The bundle server: nginx on the sandbox's loopback (Range requests make the delta).
cat >"$work/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
  access_log $work/access.log;
  server { listen 127.0.0.1:8080; root $work/www; }
}
CONF
host /usr/sbin/nginx -c "$work/nginx.conf"

say "comfyctl setup: config, group, service user, data directories, trusted key"
host "$C" setup --target linux-x86_64-cpu --key "$work/release.pub"

say "the model files release 1 declares (Impact-Subpack's detectors; stand-ins), fetched once"
mkdir -p "$work/www/models"
cp -r tests/fixtures/models/. "$work/www/models/"
host sh -c 'printf "\n[models]\nbase_url = \"http://127.0.0.1:8080/models\"\n" >>/etc/comfyui/comfyctl.toml'
host "$C" models "$b1" --fetch

say "activate release 1: verify, unpack, switch, start comfyui.service, health check"
host "$C" activate "$b1"
host systemctl is-active comfyui
host "$C" health

say "activate release 2 from http://127.0.0.1:8080 (a delta)"
host "$C" activate http://127.0.0.1:8080/comfyui-2.bundle

say "roll back"
host "$C" rollback
host "$C" health
host "$C" releases
host "$C" status
say "done"
