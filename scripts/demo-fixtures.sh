#!/usr/bin/env bash
# Turns tests/fixtures/demo/* into local git repositories under OUT (default .cache/demo-fixtures),
# with fixed author and dates so their commit ids are the same on every machine.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/.cache/demo-fixtures}
mkdir -p "$out"
export GIT_AUTHOR_NAME=fixture GIT_AUTHOR_EMAIL=fixture@example.invalid
export GIT_COMMITTER_NAME=fixture GIT_COMMITTER_EMAIL=fixture@example.invalid
export GIT_AUTHOR_DATE='2025-10-12T00:00:00Z' GIT_COMMITTER_DATE='2025-10-12T00:00:00Z'
for src in "$here"/tests/fixtures/demo/*/; do
  name=$(basename "$src")
  repo="$out/$name"
  rm -rf "$repo"
  mkdir -p "$repo"
  cp -r "$src". "$repo"/
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  git -C "$repo" -c commit.gpgsign=false commit -q -m "$name fixture"
done
echo "$out"
