#!/bin/sh
# Checks the alert rules, runs their unit tests and parses the dashboard's
# queries with promtool, built from tools/go.mod (the module proxy) into
# $ARMORSHIM_CACHE/promtool-<module version>-<go>-<hash of tools/go.mod and
# go.sum> and taken from there on later runs. The cache is
# /var/cache/armorshim-integration by default, like the other suites', else
# the user's cache directory when that one is not writable.
#
#   promtool.sh          check and test the rules, parse the dashboard
#   promtool.sh path     only print the path of a built promtool
set -eu
cd "$(dirname "$0")"
GO=${GO:-go}

module=github.com/prometheus/prometheus
version=$(awk -v m="$module" '$1 == m { print $2 }' tools/go.mod)
[ -n "$version" ] || { echo "promtool.sh: tools/go.mod requires no $module" >&2; exit 1; }
# Prometheus 3.x.y is published as module version v0.3xx.y.
release=$(echo "$version" | awk -F'[v.]' '{ printf "%d.%d.%s", $3 / 100, $3 % 100, $4 }')
gover=$($GO env GOVERSION)
hash=$(cat tools/go.mod tools/go.sum | sha256sum | cut -c1-12)

cache_root() {
  if [ -n "${ARMORSHIM_CACHE:-}" ]; then
    mkdir -p "$ARMORSHIM_CACHE" && echo "$ARMORSHIM_CACHE"
    return
  fi
  c=/var/cache/armorshim-integration
  if mkdir -p "$c" 2>/dev/null && [ -w "$c" ]; then
    echo "$c"
    return
  fi
  c=${XDG_CACHE_HOME:-$HOME/.cache}/armorshim
  mkdir -p "$c" && echo "$c"
}

dir=$(cache_root)/promtool-$version-$gover-$hash
promtool=$dir/promtool
if [ -x "$promtool" ]; then
  echo "promtool $release: cached in $dir" >&2
else
  echo "promtool $release: building $module/cmd/promtool $version from tools/go.mod (takes minutes once)" >&2
  tmp=$dir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  (cd tools && CGO_ENABLED=0 "$GO" build -trimpath \
    -ldflags "-X github.com/prometheus/common/version.Version=$release" \
    -o "$tmp/promtool" "$module/cmd/promtool")
  # Another run may have built it meanwhile: keep the first.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  trap - EXIT
  echo "promtool $release: built into $dir in $(($(date +%s) - start))s" >&2
fi

if [ "${1:-}" = path ]; then
  echo "$promtool"
  exit 0
fi
"$promtool" --version 2>&1 | head -1
"$promtool" check rules armorshim-rules.yaml
"$promtool" test rules armorshim-rules_test.yaml
# The dashboard's queries, parsed by promtool too.
(cd ../.. && PROMTOOL="$promtool" "$GO" test -count=1 -run '^TestDashboardQueriesParse$' ./shim)
