#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: stock zstd, tar and minisign (the
# interop tests call them), GNU time (benchmarks), git and patchelf (the builder), and uv from PyPI
# (the builder's installer). Idempotent; runs apt and pip only when something is missing.
set -euo pipefail

UV_VERSION=0.13.9

need=()
command -v zstd >/dev/null || need+=(zstd)
command -v minisign >/dev/null || need+=(minisign)
command -v tar >/dev/null || need+=(tar)
command -v diff >/dev/null || need+=(diffutils)
command -v git >/dev/null || need+=(git)
command -v patchelf >/dev/null || need+=(patchelf)
[ -x /usr/bin/time ] || need+=(time)
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! uv --version 2>/dev/null | grep -q "^uv $UV_VERSION"; then
  echo "installing: uv $UV_VERSION" >&2
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
