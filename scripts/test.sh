#!/usr/bin/env bash
# The whole test suite: installs the tools the tests call, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
python3.12 -V >/dev/null || { echo "Python 3.12 is needed (recipes/demo.toml builds with it)" >&2; exit 1; }
cargo test --workspace --locked "$@"
