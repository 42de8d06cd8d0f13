#!/bin/sh
# Builds armorshim's Debian package with nfpm (nfpm.yaml), and checks it
# with lintian.
#
#   deb.sh build OUTDIR     writes OUTDIR/armorshim_<version>_<arch>.deb and
#                           prints its path. ARMORSHIM_BIN names the binary
#                           to ship (required; its ELF header gives the
#                           architecture); VERSION the `git describe` it was
#                           built from (default: asked from git).
#   deb.sh lintian DEB      lintian, failing on errors and warnings. Missing,
#                           it is installed with apt-get when run as root;
#                           otherwise the check says SKIPPED and succeeds.
#   deb.sh version DESCRIBE COUNT
#                           the Debian version of a `git describe` output and
#                           the number of commits behind it.
#   deb.sh nfpm             the path of nfpm, built if needed.
#
# nfpm is built from tools/go.mod (the module proxy) into
# $ARMORSHIM_CACHE/nfpm-<version>-<go>-<hash of tools/go.mod and go.sum>,
# /var/cache/armorshim-integration by default like the other suites', else
# the user's cache directory when that one is not writable.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GO=${GO:-go}

die() {
	echo "deb.sh: $*" >&2
	exit 1
}

# debversion DESCRIBE COUNT: a Debian upstream version that sorts as the
# commits do. A tag vX.Y.Z gives X.Y.Z, a pre-release tag vX.Y.Z-rc.1 gives
# X.Y.Z~rc.1 (before X.Y.Z), N commits after a tag add +N.gHASH; with no tag
# at all, 0.0~gitCOUNT.HASH; a dirty tree adds +dirty.
debversion() {
	d=$1
	n=$2
	dirty=
	case $d in
	*-dirty)
		dirty=+dirty
		d=${d%-dirty}
		;;
	esac
	if echo "$d" | grep -Eq '^[0-9a-f]{4,40}$'; then
		v="0.0~git$n.$d"
	elif echo "$d" | grep -Eq '^v?[0-9]'; then
		snap=
		if echo "$d" | grep -Eq -- '-[0-9]+-g[0-9a-f]+$'; then
			snap=$(echo "$d" | sed -E 's/.*-([0-9]+)-(g[0-9a-f]+)$/+\1.\2/')
			d=$(echo "$d" | sed -E 's/-[0-9]+-g[0-9a-f]+$//')
		fi
		# the first hyphen starts a semver pre-release: ~ sorts it first
		v=$(echo "${d#v}" | sed 's/-/~/')$snap
	else
		v="0.0~$d"
	fi
	# Debian allows [A-Za-z0-9.+~] in an upstream version followed by a
	# revision; anything else becomes a dot.
	echo "$v$dirty" | sed 's/[^A-Za-z0-9.+~]/./g'
}

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

# nfpm_path: nfpm at the version tools/go.mod pins, built once.
nfpm_path() {
	module=github.com/goreleaser/nfpm/v2
	version=$(awk -v m="$module" '$1 == m { print $2 }' "$HERE/tools/go.mod")
	[ -n "$version" ] || die "tools/go.mod requires no $module"
	gover=$($GO env GOVERSION)
	hash=$(cat "$HERE/tools/go.mod" "$HERE/tools/go.sum" | sha256sum | cut -c1-12)
	dir=$(cache_root)/nfpm-$version-$gover-$hash
	if [ ! -x "$dir/nfpm" ]; then
		echo "nfpm $version: building $module/cmd/nfpm from packaging/tools/go.mod (once)" >&2
		tmp=$dir.tmp.$$
		rm -rf "$tmp"
		mkdir -p "$tmp"
		(cd "$HERE/tools" && CGO_ENABLED=0 "$GO" build -trimpath \
			-ldflags "-X main.version=$version" -o "$tmp/nfpm" "$module/cmd/nfpm") ||
			{ rm -rf "$tmp"; die "building nfpm failed"; }
		# Another run may have built it meanwhile: keep the first.
		mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
	fi
	echo "$dir/nfpm"
}

# packaged_unit SRC DST: the repository's unit with ExecStart running
# /usr/bin/armorshim (the package's path) instead of /usr/local/bin's.
packaged_unit() {
	sed 's#^ExecStart=/usr/local/bin/armorshim #ExecStart=/usr/bin/armorshim #' "$1" >"$2"
	if grep -q '^ExecStart=/usr/local/' "$2" || ! grep -q '^ExecStart=/usr/bin/armorshim ' "$2"; then
		die "$1: no ExecStart=/usr/local/bin/armorshim to point at /usr/bin"
	fi
}

# debarch BINARY: the Debian architecture of an ELF binary (e_machine).
debarch() {
	[ "$(od -An -c -N4 "$1" | tr -d ' ')" = '177ELF' ] || die "$1 is not an ELF binary"
	machine=$(od -An -tu2 -j18 -N2 "$1" | tr -d ' ')
	case $machine in
	62) echo amd64 ;;
	183) echo arm64 ;;
	3) echo i386 ;;
	40) echo armhf ;;
	243) echo riscv64 ;;
	21) echo ppc64el ;;
	22) echo s390x ;;
	*) die "$1: no Debian architecture for ELF machine $machine" ;;
	esac
}

build() {
	out=$1
	bin=${ARMORSHIM_BIN:?ARMORSHIM_BIN must name the armorshim binary to package}
	[ -x "$bin" ] || die "$bin is not an executable"
	# The package's binary is static: it depends on no libc.
	if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
		die "$bin is dynamically linked: build it with CGO_ENABLED=0 (make deb does)"
	fi
	describe=${VERSION:-$(git -C "$REPO" describe --tags --always --dirty 2>/dev/null || echo dev)}
	count=$(git -C "$REPO" rev-list --count HEAD 2>/dev/null || echo 0)
	upstream=$(debversion "$describe" "$count")
	arch=$(debarch "$bin")
	# Reproducible: file times are the commit's.
	SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
	export SOURCE_DATE_EPOCH

	nfpm=$(nfpm_path)
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	# nfpm.yaml names its sources relative to this directory: the
	# repository's systemd/ and packaging/, the binary, and gen/ (what is made
	# here).
	cp -r "$REPO/systemd" "$REPO/packaging" "$stage/"
	cp "$bin" "$stage/armorshim"
	mkdir -p "$stage/gen"
	packaged_unit "$REPO/systemd/armorshim.service" "$stage/gen/armorshim.service"
	packaged_unit "$REPO/systemd/armorshim.service.d/10-socket-activation.conf" "$stage/gen/10-socket-activation.conf"
	gzip -9n <"$REPO/packaging/armorshim.8" >"$stage/gen/armorshim.8.gz"
	date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
	cat >"$stage/gen/changelog.yaml" <<EOF
- semver: $upstream-1
  date: $date
  packager: ${DEB_MAINTAINER:-armorshim maintainers <maintainers@armorshim.invalid>}
  deb:
    distributions: [unstable]
    urgency: medium
  changes:
    - note: armorshim $describe, packaged with nfpm.
EOF
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	deb=$out/armorshim_${upstream}-1_$arch.deb
	rm -f "$deb"
	(cd "$stage" && DEB_VERSION=$upstream DEB_ARCH=$arch \
		DEB_MAINTAINER=${DEB_MAINTAINER:-armorshim maintainers <maintainers@armorshim.invalid>} \
		"$nfpm" package --config packaging/nfpm.yaml --packager deb --target "$deb" >&2)
	[ -f "$deb" ] || die "nfpm wrote no $deb"
	echo "$deb"
}

lintian_check() {
	deb=$1
	if ! command -v lintian >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "lintian: not installed: apt-get install lintian"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian; } >&2 ||
			echo "lintian: apt-get could not install it" >&2
	fi
	if ! command -v lintian >/dev/null 2>&1; then
		echo "lintian: SKIPPED, not installed: $deb was not checked (apt-get install lintian)"
		return 0
	fi
	echo "lintian $(lintian --version | awk '{print $2}'): $deb"
	# Errors and warnings fail; info tags and the overrides used (O:, from
	# packaging/lintian-overrides, each with its reason) are shown. lintian
	# exits 2 when it shows overrides, so its output is judged.
	rc=0
	report=$(lintian --display-info --show-overrides "$deb" 2>&1) || rc=$?
	echo "$report"
	if [ $rc -ne 0 ] && [ $rc -ne 2 ]; then
		die "lintian failed (exit status $rc)"
	fi
	if echo "$report" | grep -q '^[EW]: '; then
		die "lintian: errors or warnings above"
	fi
	echo "lintian: no errors, no warnings"
}

case ${1:-} in
build) build "${2:?usage: deb.sh build OUTDIR}" ;;
lintian) lintian_check "${2:?usage: deb.sh lintian DEB}" ;;
version) debversion "${2:?usage: deb.sh version DESCRIBE COUNT}" "${3:?usage: deb.sh version DESCRIBE COUNT}" ;;
nfpm) nfpm_path ;;
*)
	echo "usage: deb.sh build OUTDIR | lintian DEB | version DESCRIBE COUNT | nfpm" >&2
	exit 2
	;;
esac
