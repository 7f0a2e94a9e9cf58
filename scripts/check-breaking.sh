#!/bin/sh
# buf breaking (FILE rules) of the working tree's proto/ against the main branch. Both sides are built
# as images of proto/ alone; the main side from a `git archive` of main plus this checkout's
# node_modules (google/rpc and google/api come from an npm package, not from git), so it runs offline.
set -eu
against="${BUF_BREAKING_AGAINST:-main}"
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null || ! git cat-file -e "$against:proto" 2>/dev/null; then
  echo "buf breaking: no proto/ on $against yet; nothing to compare"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$against" proto buf.yaml | tar -x -C "$tmp"
ln -s "$(pwd)/node_modules" "$tmp/node_modules"
(cd "$tmp" && npx --no-install buf build proto -o "$tmp/against.binpb")
npx --no-install buf build proto -o "$tmp/current.binpb"
npx --no-install buf breaking --exclude-imports "$tmp/current.binpb" --against "$tmp/against.binpb" --config '{"version":"v2","breaking":{"use":["FILE"]}}'
echo "buf breaking: compatible with $against"
