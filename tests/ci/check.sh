#!/usr/bin/env bash
# Lints what cannot run here: the CI workflow (GitHub Actions schema, yamllint, its commands against
# the README), and the Ansible files (yamllint, ansible-lint's production profile; the fleet test
# runs them for real). Uses the tools scripts/install-deps.sh puts in .cache/tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C.UTF-8 # ansible-lint needs a UTF-8 locale
t=.cache/tools/bin
[ -x "$t/check-jsonschema" ] || { echo "linters missing: run scripts/install-deps.sh" >&2; exit 1; }
"$t/yamllint" --strict .github ansible .yamllint
"$t/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
(cd ansible && PATH=$PWD/../$t:$PATH ../$t/ansible-lint --offline --format=pep8 --nocolor)
for w in .github/workflows/*.yml; do
  "$t/python" tests/ci/check_workflow.py "$w" README.md
done
