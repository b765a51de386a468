#!/usr/bin/env bash
# Builder benchmark (figures, not a test): cold build of the demo recipe (empty cache), no-op
# rebuild, and a rebuild after one custom node changed. Targets: no-op <= 10% of cold, one node
# changed <= 25% of cold.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release -q -p builder
B=$PWD/target/release/comfy-build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash scripts/demo-fixtures.sh "$work/fixtures" >/dev/null
sed "s#\.\./\.cache/demo-fixtures#$work/fixtures#g" recipes/demo.toml >"$work/demo.toml"
$B keygen --out "$work/k" >/dev/null
now() { date +%s.%N; }
build() { $B build "$work/demo.toml" --key "$work/k.key" --out "$work/out" --cache "$work/cache" >/dev/null 2>"$work/log" || { cat "$work/log"; exit 1; }; }
t=$(now); build; cold=$(echo "$(now) - $t" | bc)
t=$(now); build; noop=$(echo "$(now) - $t" | bc)
( cd "$work/fixtures/node-hello" && echo "# changed" >>__init__.py && git -c user.name=b -c user.email=b@example.invalid commit -qam change )
# Pin the node's new commit in the recipe, as an operator would: the lock goes stale and is refreshed.
rev=$(git -C "$work/fixtures/node-hello" rev-parse HEAD)
python3 - "$work/demo.toml" "$rev" <<'PY'
import sys
p, rev = sys.argv[1], sys.argv[2]
s = open(p).read()
head, sep, tail = s.partition("node-hello\"\nrev = \"main\"")
assert sep, "node-hello entry not found"
open(p, "w").write(head + "node-hello\"\nrev = \"" + rev + "\"" + tail)
PY
t=$(now); build; node=$(echo "$(now) - $t" | bc)
printf 'cold build            %6.2f s\n' "$cold"
printf 'no-op rebuild         %6.2f s  (%.1f%% of cold; target <= 10%%)\n' "$noop" "$(echo "100 * $noop / $cold" | bc -l)"
printf 'one node changed      %6.2f s  (%.1f%% of cold; target <= 25%%)\n' "$node" "$(echo "100 * $node / $cold" | bc -l)"
