#!/usr/bin/env bash
# The main job end to end on one machine: build the demo recipe and a second release of it, activate
# the first on a scratch host root, start it and check it healthy, activate the second, roll back.
# Everything lives under .cache/demo (delete it to start over).
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

root=$work/root
rm -rf "$root"
mkdir -p "$root/etc/comfyui/keys"
cp "$work/release.pub" "$root/etc/comfyui/keys/release.pub"
printf 'target = "linux-x86_64-cpu"\n' >"$root/etc/comfyui/comfyctl.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$root/opt/comfyui/data
mkdir -p "$data"/{models,input,output,user,temp}
app=""
start() {
  "$root/opt/comfyui/current/launch.sh" --listen 127.0.0.1 --port "$port" --cpu --base-directory "$data" \
    --input-directory "$data/input" --output-directory "$data/output" --user-directory "$data/user" \
    --temp-directory "$data" --database-url "sqlite:///$data/user/comfyui.db" >"$work/app.log" 2>&1 &
  app=$!
}
stop() { [ -z "$app" ] || { kill "$app" 2>/dev/null || true; wait "$app" 2>/dev/null || true; app=""; }; }
trap stop EXIT

say "activate release 1 on $root"
$C --root "$root" activate "$b1" --no-service
start
$C --root "$root" health --port "$port"
stop

say "activate release 2"
$C --root "$root" activate "$b2" --no-service
start
$C --root "$root" health --port "$port"
stop

say "roll back"
$C --root "$root" rollback --no-service
start
$C --root "$root" health --port "$port"
stop
$C --root "$root" releases
$C --root "$root" status
