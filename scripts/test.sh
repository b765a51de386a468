#!/usr/bin/env bash
# The whole test suite: installs the tools the tests call, runs every test of the workspace, the
# real-ComfyUI end-to-end test, the SageAttention-for-sm_121 build, the workflow and YAML checks,
# and the fleet test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
python3.12 -V >/dev/null || { echo "Python 3.12 is needed (recipes/demo.toml builds with it)" >&2; exit 1; }
# Every test, the root and network ones included (plain `cargo test` lists those as ignored).
cargo test --workspace --locked --all-features "$@"
# The real ComfyUI v0.3.64 and five real custom nodes, built and run as the service user under a
# sandboxed systemd (shares .cache/build with the demo).
bash tests/real/test.sh
# SageAttention compiled for sm_121 with a CUDA 13 toolkit from PyPI (about 10 minutes on 2 cores
# when the build cache does not hold it; shares .cache/build).
bash tests/cuda/test.sh
# What cannot run here (the CI workflow) is linted, and checked against this README.
bash tests/ci/check.sh
# Three hosts, each a real systemd with sshd on a private network, driven by ansible-playbook.
bash tests/fleet/test.sh
