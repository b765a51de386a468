#!/usr/bin/env bash
# SageAttention compiled for sm_121 for real on this machine (x86_64, no GPU): recipes/comfyui-cu130-sage.toml
# takes its CUDA 13 toolkit from pinned PyPI wheels, torch 2.11.0 (CUDA 13.0) from PyPI and
# SageAttention from ../shared/upstream. Checks what the build reports: the toolkit's nvcc, the
# SASS architectures cuobjdump lists in each compiled module (sm_121a), every module importing from
# the frozen release, the smoke start logging `Using sage attention`, the release carrying the
# toolkit's ptxas for TRITON_PTXAS_PATH; then that a second build compiles nothing, and that a dry
# run says the extension is cached, and would compile again for another arch list (another torch
# changes the env's digest, which the extension's includes: builder/src/build/digest.rs's tests).
# Shares .cache/build with the demo and the other tests; the bundles live in a scratch directory
# that is removed at the end. Usage: tests/cuda/test.sh   (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/env.sh
cargo build --release --locked -q -p builder
B=$PWD/target/release/comfy-build
cache=$PWD/.cache/build
mkdir -p .cache
work=$(mktemp -d "$PWD/.cache/cuda-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
t0=$SECONDS
say() { printf '\n== [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
recipe=recipes/comfyui-cu130-sage.toml
$B keygen --out "$work/release" >/dev/null

build() { # NAME: builds the recipe, stderr shown and kept in NAME.err, the JSON in NAME.json
  { /usr/bin/time -f "peak-rss-kib=%M" $B build "$recipe" --key "$work/release.key" --out "$work/out-$1" \
      --cache "$cache" --locked --json 2>&1 1>&3 | tee "$work/$1.err" >&2; } 3>"$work/$1.json"
}

say "build: the toolkit from wheels, SageAttention for 12.1 (compiled unless the cache has it)"
build first
grep -E "^ *toolkit nvcc: .*release 13\.0" "$work/first.err" || fail "the build did not report the toolkit's nvcc"
for m in _qattn_sm80 _qattn_sm89 _fused; do
  grep -E "^ *sass sageattention/$m\..*: .*sm_121a" "$work/first.err" \
    || fail "cuobjdump did not list sm_121a kernels in sageattention.$m"
done
imports=$(grep -E "^ *imports " "$work/first.err") || fail "the build did not import the compiled modules"
for m in _qattn_sm80 _qattn_sm89 _fused; do
  [[ "$imports" == *"sageattention.$m"* ]] || fail "sageattention.$m did not import from the frozen release"
done
echo "$imports"
grep -E "^ *extension sageattention compiled in" "$work/first.err" || echo "(extension taken from the cache)"
stage=$(basename "$(json 'd["stage"]' <"$work/first.json")")
log=$(ls "$cache"/logs/smoke-"${stage:0:12}".log)
grep -m1 "Using sage attention" "$log" || fail "the smoke start did not log Using sage attention ($log)"
bundle=$(json 'd["path"]' <"$work/first.json")
tar --zstd -tf "$bundle" >"$work/files.txt"
grep -q "site-packages/nvidia/cu13/bin/ptxas$" "$work/files.txt" || fail "the release lacks the toolkit's ptxas"
python3 - "$bundle" <<'PY' || fail "the manifest"
import subprocess, sys
m = subprocess.run(["tar", "--zstd", "-xOf", sys.argv[1], ".bundle/manifest.toml"], capture_output=True, text=True, check=True).stdout
assert 'TRITON_PTXAS_PATH = "@release/' in m, "no TRITON_PTXAS_PATH in the launch env"
assert "--use-sage-attention" in m
print("manifest: launch with --use-sage-attention, TRITON_PTXAS_PATH in the release")
PY
echo "bundle: $(du -h "$bundle" | cut -f1), $(wc -l <"$work/files.txt") entries"
rm -f "$bundle"

say "a second build with the same inputs compiles nothing"
t=$SECONDS
build again
grep -E "^ *extension sageattention [0-9a-f]{12} cached" "$work/again.err" || fail "the extension was not taken from the cache"
grep -q "compiled in" "$work/again.err" && fail "the second build compiled"
grep -E "^ *sass sageattention/_fused\..*: .*sm_121a" "$work/again.err" || fail "the cached wheel's kernels were not checked"
echo "rebuild: $((SECONDS - t))s"
rm -f "$(json 'd["path"]' <"$work/again.json")"

say "dry runs: cached as built; another arch list would compile again"
dry() { $B build "$1" --out "$work/dry" --cache "$cache" --dry-run --json | json '[s["cached"] for s in d["stages"] if s["stage"] == "extension sageattention"][0]'; }
[ "$(dry "$recipe")" = True ] || fail "the dry run does not show the extension cached"
cp "$recipe" "$work/other-arch.toml"
sed -i -e 's|^arch_list = "12.1"|arch_list = "12.0"|' -e 's|TORCH_CUDA_ARCH_LIST = "12.1"|TORCH_CUDA_ARCH_LIST = "12.0"|' \
  -e 's|"\.\./\.\./shared|"'"$PWD"'/../shared|g' "$work/other-arch.toml"
cp "$recipe.lock" "$work/other-arch.toml.lock"
[ "$(dry "$work/other-arch.toml")" = False ] || fail "another arch list would not compile again"
$B build "$work/other-arch.toml" --out "$work/dry" --cache "$cache" --dry-run | grep -E "extension sageattention|sm_120|cost" | head -4
say "SageAttention for sm_121: ok"
