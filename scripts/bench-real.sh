#!/usr/bin/env bash
# Performance at the real release's scale (figures, not a test): the demo's two real releases
# (ComfyUI v0.3.64, five custom nodes, PyPI torch; release 2 moves KJNodes one commit), built or
# reused from .cache/build, each step beside its stock counterpart on the same input in the same
# run, RUNS pairs (default 2). Peak RSS is the process's own (VmHWM sampled from /proc; the
# activation's pre-flight Python import is a child and not counted).
#
#   pack             comfy-build pack of release 1's tree      tar -c | zstd -3 -T0 of the same tree
#   pack (cold)      the same, page cache dropped first, in a   the same, in the same cgroup
#                    memory cgroup of 2 GiB (a builder whose
#                    page cache cannot hold the tree); also the
#                    bytes read from disk (pgpgin)
#   rebuild pack     release 2 (tree cached) after release 1   cp of release 1's bundle + sync
#   first activate   comfyctl activate (--no-service)          zstd -dc BUNDLE | tar -x + sync
#   second activate  release 2 after release 1
#   verify (warm)    comfyctl verify                           find | xargs -P<cores> sha256sum
#
# REBUILD=1 adds the builds: one node changed (release 2's tree removed, release 1's pack kept)
# and cold (env, trees and pack cache removed; uv's download cache kept), whole `build` commands.
# Needs about 40 GB free beside .cache/build; scratch lives in .cache/bench-real and is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
bash scripts/install-deps.sh >/dev/null
. scripts/env.sh
cargo build --release --locked -q -p builder -p activator
B=$PWD/target/release/comfy-build
C=$PWD/target/release/comfyctl
cache=$PWD/.cache/build
w=$PWD/.cache/bench-real
rm -rf "$w"
mkdir -p "$w"
trap 'rm -rf "$w"' EXIT
jobs=$(nproc)
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Runs a command, printing "SECONDS PEAK_KIB" of its own process to fd 3.
measure() {
  local t0 t1 pid hwm=0 h
  t0=$(date +%s.%N)
  "$@" >"$w/out" 2>"$w/err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$h" ] && hwm=$h
    sleep 0.05
  done
  wait "$pid" || { cat "$w/err" >&2; return 1; }
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $hwm" >&3
}
secs() { measure "$@" 3>&1 >/dev/null | cut -d' ' -f1; }
both() { measure "$@" 3>&1 >/dev/null; }
sh_c() { sh -c "$1"; }
# Before each activation side: the same page-cache state (written data on disk, caches dropped
# where this user may), then the bundle read once so both sides start from a warm input.
fresh() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  cat "$@" >/dev/null
}
ratio() { echo "scale=2; $1 / $2" | bc; }
pgin() { awk '/^pgpgin / {print $2}' /proc/vmstat; } # KiB read from block devices, machine-wide
gb() { echo "scale=1; $1 * 1024 / 1000000000" | bc; }
# A memory cgroup of 2 GiB (v2 or v1) for the cold pack, or none where this machine has neither.
cg=""
for base in /sys/fs/cgroup /sys/fs/cgroup/memory; do
  if [ -w "$base" ] && mkdir "$base/comfy-bench-$$" 2>/dev/null; then
    cg=$base/comfy-bench-$$
    if [ -f "$cg/memory.max" ]; then echo $((2 << 30)) >"$cg/memory.max"; else echo $((2 << 30)) >"$cg/memory.limit_in_bytes"; fi
    break
  fi
done
trap 'rm -rf "$w"; [ -n "$cg" ] && rmdir "$cg" 2>/dev/null || true' EXIT
# A prefix that runs a command in it (the command keeps the prefix's pid, so its peak RSS is read).
in_cg=()
[ -n "$cg" ] && in_cg=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg")
[ -n "$cg" ] || echo "(no memory cgroup here: the cold pack runs with all of this machine's page cache)"
mib() { echo "$(( $1 / 1024 )) MiB"; }

build() { # recipe -> JSON of the build
  $B lock "$1" --cache "$cache" >/dev/null 2>&1
  $B build "$1" --key "$w/release.key" --out "$w/bundles" --cache "$cache" --locked --json 2>"$w/build.err" \
    || { cat "$w/build.err" >&2; exit 1; }
}

$B keygen --out "$w/release" >/dev/null
r1=$(bash scripts/comfyui-recipe.sh 1 "$w/recipes")
r2=$(bash scripts/comfyui-recipe.sh 2 "$w/recipes")
echo "== building (or reusing) the real releases 1 and 2"
j1=$(build "$r1")
j2=$(build "$r2")
stage1=$(echo "$j1" | json 'd["stage"]')
b1=$(echo "$j1" | json 'd["path"]')
b2=$(echo "$j2" | json 'd["path"]')
files=$(find "$stage1" | wc -l)
size=$(du -sb "$stage1" | cut -f1)
echo "release tree: $files entries, $size bytes; bundle $(stat -c %s "$b1") bytes; $jobs cores"

host() { # a scratch host root with the release key trusted
  rm -rf "$w/root"
  mkdir -p "$w/root/etc/comfyui/keys"
  cp "$w/release.pub" "$w/root/etc/comfyui/keys/bench.pub"
  echo 'target = "linux-x86_64-cpu"' >"$w/root/etc/comfyui/comfyctl.toml"
}

printf '\n%-18s %10s %10s %8s %10s\n' step ours stock ratio "peak RSS"
for run in $(seq 1 "$runs"); do
  echo "-- run $run"
  tar -C "$stage1" -cf - . | cat >/dev/null # the tree warm for both sides (tar skips reading into /dev/null)
  read -r ours rss < <(both "$B" pack "$stage1" --name bench --version 1 --sequence 1 \
    --target linux-x86_64-cpu --key "$w/release.key" --out "$w/packed.bundle")
  rm -f "$w/packed.bundle"
  stock=$(secs sh_c "tar -C '$stage1' -cf - . | zstd -q -3 -T0 -o '$w/stock.tar.zst'")
  rm -f "$w/stock.tar.zst"
  printf '%-18s %9.1fs %9.1fs %7sx %10s\n' pack "$ours" "$stock" "$(ratio "$ours" "$stock")" "$(mib "$rss")"
  # Cold: nothing of the tree in the page cache; the bytes each side read from disk.
  fresh /dev/null
  p0=$(pgin)
  read -r ours rss < <(both "${in_cg[@]}" "$B" pack "$stage1" --name bench --version 1 --sequence 1 \
    --target linux-x86_64-cpu --key "$w/release.key" --out "$w/packed.bundle")
  ours_read=$(($(pgin) - p0))
  rm -f "$w/packed.bundle"
  fresh /dev/null
  p0=$(pgin)
  stock=$(secs "${in_cg[@]}" sh -c "tar -C '$stage1' -cf - . | zstd -q -3 -T0 -o '$w/stock.tar.zst'")
  stock_read=$(($(pgin) - p0))
  rm -f "$w/stock.tar.zst"
  printf '%-18s %9.1fs %9.1fs %7sx %10s  (read %s GB, stock %s GB, tree %s GB)\n' "pack (cold)" "$ours" "$stock" \
    "$(ratio "$ours" "$stock")" "$(mib "$rss")" "$(gb "$ours_read")" "$(gb "$stock_read")" "$(echo "scale=1; $size / 1000000000" | bc)"

  # Rebuild: release 1 packed last (its frames recorded), then release 2 with its tree cached.
  rm -f "$w"/bundles/*
  build "$r1" >/dev/null
  t=$(build "$r2")
  ours=$(echo "$t" | json '[s["seconds"] for s in d["stages"] if s["stage"] == "pack"][0]')
  copied=$(echo "$t" | json 'str(d["frames_copied"]) + " of " + str(d["frames"]) + " frames copied"')
  stock=$(secs sh_c "cp '$b1' '$w/copy.bundle' && sync -f '$w/copy.bundle'")
  rm -f "$w/copy.bundle"
  printf '%-18s %9.1fs %9.1fs %7sx %10s  (%s; stock: cp of the bundle)\n' "rebuild pack" "$ours" "$stock" "$(ratio "$ours" "$stock")" "" "$copied"

  host
  fresh "$b1"
  read -r ours rss < <(both "$C" --root "$w/root" activate "$b1" --no-service)
  mkdir -p "$w/x"
  fresh "$b1"
  stock=$(secs sh_c "zstd -dc '$b1' | tar -xf - -C '$w/x' && sync -f '$w/x'")
  printf '%-18s %9.1fs %9.1fs %7sx %10s\n' "first activate" "$ours" "$stock" "$(ratio "$ours" "$stock")" "$(mib "$rss")"
  # As on a host where release 1 runs: its files warm, no cache dropped, the writes synced.
  sync
  cat "$b2" >/dev/null
  read -r ours rss < <(both "$C" --root "$w/root" activate "$b2" --no-service)
  printf '%-18s %9.1fs %10s %8s %10s\n' "second activate" "$ours" "" "" "$(mib "$rss")"
  "$C" --root "$w/root" verify >/dev/null
  read -r ours rss < <(both "$C" --root "$w/root" verify)
  stock=$(secs sh_c "find '$w/x' -type f -print0 | xargs -0 -P $jobs -n 256 sha256sum >/dev/null")
  printf '%-18s %9.1fs %9.1fs %7sx %10s  (%s GB/s)\n' "verify (warm)" "$ours" "$stock" "$(ratio "$ours" "$stock")" "$(mib "$rss")" \
    "$(echo "scale=2; $size / $ours / 1000000000" | bc)"
  read -r ours rss < <(both "$C" --root "$w/root" rollback --no-service)
  printf '%-18s %9.3fs %10s %8s %10s\n' rollback "$ours" "" "" "$(mib "$rss")"
  rm -rf "$w/x" "$w/root"
done

if [ "${REBUILD:-}" = 1 ]; then
  echo "-- builds (whole commands)"
  stage2=$(echo "$j2" | json 'd["stage"]')
  rm -f "$w"/bundles/*
  build "$r1" >/dev/null
  rm -rf "$stage2" "$stage2.nodes.json"
  t=$(build "$r2")
  node=$(echo "$t" | json 'd["seconds"]')
  echo "one node changed: $node s ($(echo "$t" | json '", ".join(s["stage"] + " " + format(s["seconds"], ".1f") + "s" for s in d["stages"])'))"
  env_dir=$(dirname "$(dirname "$stage1")")/env
  rm -rf "$env_dir" "$(dirname "$stage1")" "$cache/pack" "$w"/bundles/*
  t=$(build "$r1")
  cold=$(echo "$t" | json 'd["seconds"]')
  echo "cold (uv's download cache kept): $cold s ($(echo "$t" | json '", ".join(s["stage"] + " " + format(s["seconds"], ".1f") + "s" for s in d["stages"])'))"
  echo "one node changed / cold: $(ratio "$node" "$cold")x (target <= 0.25x)"
fi
