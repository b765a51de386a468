#!/usr/bin/env bash
# The fleet test: three Sparks (real systemds with sshd, each in its own network namespace on a
# private bridge, tests/fleet/world.sh) driven by ansible-playbook over ssh with ansible/site.yml and
# ansible/rollback.yml, the bundles served by nginx. Builds the demo release, a second one that
# changes one custom node, and a bad one (adds a node that imports in the builder's smoke start,
# where every GPU is hidden, but opens the NVIDIA driver on a host, which has none). Needs root
# and scripts/install-deps.sh's tools.
# Usage: tests/fleet/test.sh   (scripts/test.sh runs it)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
. scripts/env.sh
[ -x .cache/tools/bin/ansible-playbook ] || { echo "ansible-playbook missing: run scripts/install-deps.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the fleet test needs root (network namespaces, sandboxed systemd)" >&2; exit 1; }
cargo build --release --locked -q -p builder -p activator
B=$repo/target/release/comfy-build
work=$(mktemp -d /tmp/comfy-fleet.XXXXXX)
chmod 755 "$work"
# The playbook runs' logs are kept in .cache/fleet-logs (the rest goes).
trap 'rm -rf .cache/fleet-logs; mkdir -p .cache/fleet-logs; cp "$work"/*.log .cache/fleet-logs/ 2>/dev/null; rm -rf "$work"' EXIT
say() { printf '\n== fleet: %s\n' "$*" >&2; }

say "fixtures and three bundles"
fx=$work/fixtures
bash scripts/demo-fixtures.sh "$fx" >/dev/null
c1=$(git -C "$fx/node-hello" rev-parse HEAD)
# Release 2 changes one custom node: a new commit of node-hello with one more node class.
cat >>"$fx/node-hello/__init__.py" <<'PY'


class HelloAgain:
    CATEGORY = "demo"


NODE_CLASS_MAPPINGS["HelloAgain"] = HelloAgain
PY
GIT_AUTHOR_DATE='2025-10-13T00:00:00Z' GIT_COMMITTER_DATE='2025-10-13T00:00:00Z' \
  git -C "$fx/node-hello" -c user.name=fixture -c user.email=fixture@example.invalid -c commit.gpgsign=false \
  commit -qam "HelloAgain"
recipe() { # NAME VERSION SEQUENCE NODE_REV EXTRA_LAUNCH_ARG
  python3 - "$@" <<'PY'
import re, sys
name, version, seq, rev, extra = sys.argv[1:6]
s = open("recipes/demo.toml").read()
s = s.replace("../.cache/demo-fixtures", sys.argv[6])
s = re.sub(r'^version = ".*"$', f'version = "{version}"', s, count=1, flags=re.M)
s = re.sub(r'^sequence = \d+$', f"sequence = {seq}", s, count=1, flags=re.M)
s = re.sub(r'(git = "[^"]*/node-hello"\nrev = )"main"', rf'\1"{rev}"', s)
if extra:
    # A custom node fixture to add.
    s += f'\n[[custom_nodes]]\ngit = "{sys.argv[6]}/{extra}"\nrev = "main"\n'

open(sys.argv[7], "w").write(s)
PY
}
mkdir -p "$work/www"
$B keygen --out "$work/release" >/dev/null
build() { # NAME VERSION SEQUENCE NODE_REV EXTRA_NODE
  recipe "$@" "$fx" "$work/$1.toml"
  $B build "$work/$1.toml" --key "$work/release.key" --out "$work/out-$1" --cache "$work/cache" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])' | xargs -I{} mv {} "$work/www/$1.bundle"
}
build r1 0.1.0 1 "$c1" ""
build bad 0.1.1 2 "$c1" node-needs-driver
build r2 0.1.2 3 main ""
ls -l "$work/www" >&2

bash tests/fleet/world.sh "$work" 3 bash tests/fleet/scenario.sh "$work"
