#!/bin/sh
# Fails when gen/ differs from what `npm run generate` produces from proto/ (stale or hand-edited stubs).
set -eu
npm run --silent generate
if [ -n "$(git status --porcelain -- gen)" ]; then
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  git status --short -- gen >&2
  git --no-pager diff --stat -- gen >&2
  exit 1
fi
echo "gen/ is up to date"
