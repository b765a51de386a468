#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: stock zstd, tar and minisign (the
# interop tests call them). Idempotent; runs apt only when something is missing.
set -euo pipefail

need=()
command -v zstd >/dev/null || need+=(zstd)
command -v minisign >/dev/null || need+=(minisign)
command -v tar >/dev/null || need+=(tar)
command -v diff >/dev/null || need+=(diffutils)
[ -x /usr/bin/time ] || need+=(time)
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
