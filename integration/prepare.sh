#!/usr/bin/env bash
# prepare.sh — host side of the armorshim VM integration suite.
#
# Builds (or takes from the cache) everything the guest needs, then assembles
# the per-run pieces:
#   * Debian bookworm minbase root (debootstrap from this machine's apt mirror)
#     with apparmor, jq and the CNI plugins,
#   * Debian's 6.1 kernel (AppArmor built in and enabled by default),
#   * containerd / ctr / containerd-shim-runc-v2, runc, crictl, critest built
#     from the Go module proxy,
#   * container images built locally from busybox-static (no registry),
#   * an initramfs holding busybox, the modules needed to mount the root disk,
#     the guest scripts and the armorshim binary built from this checkout.
#
# Everything expensive lives in ${ARMORSHIM_CACHE:-/var/cache/armorshim-integration}/<key>,
# where the key holds the versions and a hash of the recipe that made it.
#
# stdout carries only machine-readable lines for the Go test:
#   ARMORSHIM-PREP key=value        (paths of the artefacts)
#   ARMORSHIM-PHASE {"phase":..,"seconds":..,"cached":..}
# Everything else goes to stderr.
#
# Usage: prepare.sh OUTDIR
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${1:?usage: prepare.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

CACHE=${ARMORSHIM_CACHE:-/var/cache/armorshim-integration}
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.3.6
CRITOOLS_VERSION=v1.37.0
SUITE=bookworm
# Name containerd v2.4.2 uses for the sandbox (pause) image (sandbox_image /
# pinned_images.sandbox default); the pause image is imported under it.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2

GUEST_PACKAGES=apparmor,jq,kmod,iproute2,containernetworking-plugins,libseccomp2,procps,ca-certificates
HOST_PACKAGES="qemu-system-x86 qemu-utils debootstrap cpio e2fsprogs kmod pkg-config libseccomp-dev gcc xz-utils zstd"

mkdir -p "$CACHE"
log() { echo "prepare: $*" >&2; }
die() { echo "prepare: FATAL: $*" >&2; exit 1; }
emit() { echo "ARMORSHIM-PREP $1=$2"; }
phase_start() { PHASE_T0=$(date +%s); PHASE_NAME=$1; PHASE_CACHED=true; }
phase_end() {
	echo "ARMORSHIM-PHASE {\"phase\":\"$PHASE_NAME\",\"seconds\":$(( $(date +%s) - PHASE_T0 )),\"cached\":$PHASE_CACHED}"
}
# short hash of files and strings, for cache keys
recipe_hash() { cat "$@" | sha256sum | cut -c1-12; }
# the part of this script between two markers, so that editing one stage
# does not invalidate the others
stage_text() { sed -n "/^# >>> $1\$/,/^# <<< $1\$/p" "$HERE/prepare.sh"; }
stage_hash() { { stage_text "$1"; shift; printf '%s\n' "$@"; } | sha256sum | cut -c1-12; }

# The apt mirror this machine is configured with (deb822 or one-line format).
apt_mirror() {
	local m
	m=$(grep -hs -A3 '^Types: deb' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
		awk '/^URIs:/{print $2}' | grep -v security | grep -i debian | head -n1 || true)
	if [ -z "$m" ]; then
		m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			awk '{print $2}' | grep -v security | grep -i debian | head -n1 || true)
	fi
	[ -n "$m" ] || die "no Debian mirror found in /etc/apt/sources.list*"
	echo "$m"
}

# >>> hostpkgs
phase_start host-packages
APT_UPDATED=
apt_install() {
	[ -n "$APT_UPDATED" ] || { log "apt-get update"; apt-get update -qq >&2; APT_UPDATED=1; }
	log "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
missing=()
for p in $HOST_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then PHASE_CACHED=false; apt_install "${missing[@]}"; fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"
GOVERSION=$(go env GOVERSION)
phase_end
# <<< hostpkgs

# >>> bins
phase_start build-binaries
BINS_KEY=bins-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-critools-$CRITOOLS_VERSION-$GOVERSION-$(stage_hash bins)
BINS=$CACHE/$BINS_KEY
if [ ! -f "$BINS/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$BINS" "$BINS.tmp"; mkdir -p "$BINS.tmp"
	log "building containerd $CONTAINERD_VERSION"
	GOBIN=$BINS.tmp CGO_ENABLED=0 GOFLAGS=-trimpath go install \
		github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION \
		github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION >&2
	log "building runc $RUNC_VERSION (cgo, seccomp)"
	GOBIN=$BINS.tmp CGO_ENABLED=1 go install -trimpath -tags seccomp \
		github.com/opencontainers/runc@$RUNC_VERSION >&2
	log "building crictl $CRITOOLS_VERSION"
	GOBIN=$BINS.tmp CGO_ENABLED=0 go install -trimpath \
		sigs.k8s.io/cri-tools/cmd/crictl@$CRITOOLS_VERSION >&2
	log "building critest $CRITOOLS_VERSION (go test -c from a throwaway module)"
	tm=$(mktemp -d)
	cat >"$tm/go.mod" <<EOF
module armorshim.invalid/critestbuild

go 1.26

require sigs.k8s.io/cri-tools $CRITOOLS_VERSION
EOF
	(cd "$tm" && GOFLAGS=-mod=mod go get sigs.k8s.io/cri-tools/cmd/critest@$CRITOOLS_VERSION >&2 &&
		CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -trimpath -o "$BINS.tmp/critest" sigs.k8s.io/cri-tools/cmd/critest >&2)
	rm -rf "$tm"
	for b in containerd ctr containerd-shim-runc-v2 runc crictl critest; do
		[ -x "$BINS.tmp/$b" ] || die "$b was not built"
	done
	touch "$BINS.tmp/.done"; mv "$BINS.tmp" "$BINS"
fi
phase_end
# <<< bins

if [ "${ARMORSHIM_PREP_ONLY:-}" = bins ]; then exit 0; fi
