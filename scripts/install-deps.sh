#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: stock zstd, tar and minisign (the
# interop tests call them), GNU time (benchmarks), git and patchelf (the builder), sshd, sudo, nginx
# and iproute2 (the fleet test's hosts, bundle server and network), uv from PyPI (the builder's
# installer), and the test tools pinned in scripts/tools-requirements.txt (ansible-core, linters)
# into .cache/tools. Idempotent; runs apt and pip only when something is missing.
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
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v ip >/dev/null || need+=(iproute2)
command -v sudo >/dev/null || need+=(sudo)
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

tools=$(cd "$(dirname "$0")/.." && pwd)/.cache/tools
req=$(cd "$(dirname "$0")" && pwd)/tools-requirements.txt
if ! cmp -s "$req" "$tools/installed-requirements.txt" 2>/dev/null; then
  echo "installing: test tools ($req) into $tools" >&2
  rm -rf "$tools"
  uv venv --quiet --python /usr/bin/python3 "$tools"
  VIRTUAL_ENV=$tools uv pip install --quiet --require-hashes -r "$req"
  cp "$req" "$tools/installed-requirements.txt"
fi
