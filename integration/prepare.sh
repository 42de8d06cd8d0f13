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
#   * the kubelet, kube-apiserver, kube-controller-manager, kube-scheduler,
#     kubectl and etcd built from the Go module proxy,
#   * node-feature-discovery's nfd-master and nfd-worker (and its CRDs),
#     built from the Go module proxy,
#   * container images built locally from busybox-static (no registry),
#   * an initramfs holding busybox, the modules needed to mount the root disk,
#     the guest scripts, the armorshim binary built from this checkout and
#     its Debian package (packaging/deb.sh, with nfpm built and cached).
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
# The kubelet driven through armorshim (built from k8s.io/kubernetes).
KUBERNETES_VERSION=v1.37.2
# node-feature-discovery (nfd-master, nfd-worker) for the cluster boot
NFD_VERSION=v0.17.3
SUITE=bookworm
# Name containerd v2.4.2 uses for the sandbox (pause) image (sandbox_image /
# pinned_images.sandbox default); the pause image is imported under it.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2

# systemd and dbus: PID 1 of the fleet boot (its installer drives systemd units)
GUEST_PACKAGES=apparmor,jq,kmod,iproute2,containernetworking-plugins,libseccomp2,procps,ca-certificates,sudo,systemd,dbus
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

# >>> ginkgo
# critest -parallel=N runs its specs through the ginkgo CLI; build the CLI at
# the ginkgo version cri-tools itself requires.
phase_start ginkgo
CRITOOLS_MOD=$(go mod download -json sigs.k8s.io/cri-tools@$CRITOOLS_VERSION | sed -n 's/.*"GoMod": "\(.*\)",*$/\1/p')
GINKGO_VERSION=$(awk '$1=="github.com/onsi/ginkgo/v2"{print $2; exit}' "$CRITOOLS_MOD")
[ -n "$GINKGO_VERSION" ] || die "cannot find the ginkgo version of cri-tools $CRITOOLS_VERSION"
GINKGO=$CACHE/ginkgo-$GINKGO_VERSION-$GOVERSION-$(stage_hash ginkgo)
if [ ! -f "$GINKGO/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$GINKGO" "$GINKGO.tmp"; mkdir -p "$GINKGO.tmp"
	log "building the ginkgo CLI $GINKGO_VERSION"
	GOBIN=$GINKGO.tmp CGO_ENABLED=0 go install -trimpath github.com/onsi/ginkgo/v2/ginkgo@$GINKGO_VERSION >&2
	touch "$GINKGO.tmp/.done"; mv "$GINKGO.tmp" "$GINKGO"
fi
phase_end
# <<< ginkgo

# >>> kubelet
# k8s.io/kubernetes points its staging modules (k8s.io/api, ...) at
# ./staging; a throwaway module replaces each with its published tag.
phase_start kubelet
KUBELET=$CACHE/kubelet-$KUBERNETES_VERSION-$GOVERSION-$(stage_hash kubelet)
if [ ! -f "$KUBELET/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$KUBELET" "$KUBELET.tmp"; mkdir -p "$KUBELET.tmp"
	log "building the kubelet $KUBERNETES_VERSION (a throwaway module; several minutes)"
	KMOD=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*$/\1/p')
	[ -f "$KMOD" ] || die "cannot download k8s.io/kubernetes $KUBERNETES_VERSION"
	tm=$(mktemp -d)
	{
		printf 'module armorshim.invalid/kubeletbuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
		sed -n "s#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0${KUBERNETES_VERSION#v1}#p" "$KMOD"
		echo ')'
	} >"$tm/go.mod"
	(cd "$tm" && GOFLAGS=-mod=mod go get "k8s.io/kubernetes/cmd/kubelet@$KUBERNETES_VERSION" >&2 &&
		CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$KUBELET.tmp/kubelet" \
			-ldflags "-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean" \
			k8s.io/kubernetes/cmd/kubelet >&2)
	rm -rf "$tm"
	[ -x "$KUBELET.tmp/kubelet" ] || die "the kubelet was not built"
	touch "$KUBELET.tmp/.done"; mv "$KUBELET.tmp" "$KUBELET"
fi
phase_end
# <<< kubelet

# >>> controlplane
# The cluster boot's control plane, built like the kubelet (a throwaway
# module replacing the staging modules with their tags): kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl of the same
# Kubernetes version, and etcd at the version that Kubernetes requires.
phase_start controlplane
CONTROLPLANE=$CACHE/controlplane-$KUBERNETES_VERSION-$GOVERSION-$(stage_hash controlplane)
if [ ! -f "$CONTROLPLANE/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$CONTROLPLANE" "$CONTROLPLANE.tmp"; mkdir -p "$CONTROLPLANE.tmp"
	log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd (a throwaway module; several minutes)"
	KMOD=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*$/\1/p')
	[ -f "$KMOD" ] || die "cannot download k8s.io/kubernetes $KUBERNETES_VERSION"
	ETCD_VERSION=$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "$KMOD" | head -n 1)
	[ -n "$ETCD_VERSION" ] || die "k8s.io/kubernetes $KUBERNETES_VERSION names no etcd server version"
	tm=$(mktemp -d)
	{
		printf 'module armorshim.invalid/controlplanebuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
		sed -n "s#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0${KUBERNETES_VERSION#v1}#p" "$KMOD"
		echo ')'
	} >"$tm/go.mod"
	(cd "$tm" && GOFLAGS=-mod=mod go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 &&
		for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
			CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$CONTROLPLANE.tmp/$c" \
				-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
				"k8s.io/kubernetes/cmd/$c" >&2 || exit 1
		done &&
		CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$CONTROLPLANE.tmp/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3 >&2)
	rm -rf "$tm"
	for c in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
		[ -x "$CONTROLPLANE.tmp/$c" ] || die "$c was not built"
	done
	echo "$ETCD_VERSION" >"$CONTROLPLANE.tmp/etcd.version"
	touch "$CONTROLPLANE.tmp/.done"; mv "$CONTROLPLANE.tmp" "$CONTROLPLANE"
fi
phase_end
# <<< controlplane

# >>> nfd
# node-feature-discovery's nfd-master and nfd-worker, which the cluster boot
# runs to put armorshim's feature file on the Node as labels. NFD's go.mod
# pins the k8s.io modules with replace directives (which go install
# ignores): a throwaway module requires NFD and copies its replace block,
# with the nested API module (./api/nfd in NFD's tree) at its published tag.
phase_start nfd
NFD=$CACHE/nfd-$NFD_VERSION-$GOVERSION-$(stage_hash nfd)
if [ ! -f "$NFD/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$NFD" "$NFD.tmp"; mkdir -p "$NFD.tmp"
	log "building nfd-master and nfd-worker $NFD_VERSION (a throwaway module)"
	NJSON=$(go mod download -json "sigs.k8s.io/node-feature-discovery@$NFD_VERSION") ||
		die "cannot download sigs.k8s.io/node-feature-discovery $NFD_VERSION"
	NMOD=$(sed -n 's/.*"GoMod": "\(.*\)",*$/\1/p' <<<"$NJSON")
	NDIR=$(sed -n 's/.*"Dir": "\(.*\)",*$/\1/p' <<<"$NJSON")
	[ -f "$NMOD" ] && [ -d "$NDIR" ] || die "cannot download sigs.k8s.io/node-feature-discovery $NFD_VERSION"
	grep -q '^replace (' "$NMOD" || die "node-feature-discovery $NFD_VERSION has no replace block"
	tm=$(mktemp -d)
	{
		printf 'module armorshim.invalid/nfdbuild\n\ngo 1.26\n\nrequire sigs.k8s.io/node-feature-discovery %s\n\n' "$NFD_VERSION"
		sed -n '/^replace (/,/^)/p' "$NMOD" |
			sed "s#=> \./api/nfd\$#=> sigs.k8s.io/node-feature-discovery/api/nfd $NFD_VERSION#"
	} >"$tm/go.mod"
	! grep -q '=> \./' "$tm/go.mod" || die "node-feature-discovery $NFD_VERSION replaces a module with a path: $(grep '=> \./' "$tm/go.mod")"
	(cd "$tm" && GOFLAGS=-mod=mod go get "sigs.k8s.io/node-feature-discovery/cmd/nfd-master@$NFD_VERSION" >&2 &&
		for c in nfd-master nfd-worker; do
			CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$NFD.tmp/$c" \
				-ldflags "-s -w -X sigs.k8s.io/node-feature-discovery/pkg/version.version=$NFD_VERSION" \
				"sigs.k8s.io/node-feature-discovery/cmd/$c" >&2 || exit 1
		done)
	rm -rf "$tm"
	for c in nfd-master nfd-worker; do
		[ -x "$NFD.tmp/$c" ] || die "$c was not built"
	done
	cp "$NDIR/deployment/base/nfd-crds/nfd-api-crds.yaml" "$NFD.tmp/nfd-api-crds.yaml" ||
		die "node-feature-discovery $NFD_VERSION has no deployment/base/nfd-crds/nfd-api-crds.yaml"
	chmod 0644 "$NFD.tmp/nfd-api-crds.yaml"
	touch "$NFD.tmp/.done"; mv "$NFD.tmp" "$NFD"
fi
phase_end
# <<< nfd

# >>> kernel
phase_start kernel
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$KPKG" ]; then apt-get update -qq >&2; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package"
KDEB_VER=$(apt-cache policy "$KPKG" | awk '/Candidate:/{print $2}')
KVER=${KPKG#linux-image-}
KERNEL=$CACHE/kernel-$KPKG-$KDEB_VER-$(stage_hash kernel)
# modules the initramfs loads to mount the root disk (ext4 on virtio-blk)
INITRD_MODULES="virtio_pci virtio_blk ext4 crc32c_generic"
if [ ! -f "$KERNEL/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$KERNEL" "$KERNEL.tmp"; mkdir -p "$KERNEL.tmp/deb"
	log "downloading $KPKG=$KDEB_VER"
	(cd "$KERNEL.tmp/deb" && apt-get download -q "$KPKG=$KDEB_VER" >&2)
	dpkg-deb -x "$KERNEL.tmp"/deb/*.deb "$KERNEL.tmp/root"
	rm -rf "$KERNEL.tmp/deb"
	# usr-merge: the package ships /lib/modules; the guest root has /lib -> usr/lib
	if [ -d "$KERNEL.tmp/root/lib/modules" ]; then
		mkdir -p "$KERNEL.tmp/root/usr/lib"
		mv "$KERNEL.tmp/root/lib/modules" "$KERNEL.tmp/root/usr/lib/modules"
		rm -rf "$KERNEL.tmp/root/lib"
	fi
	M=$KERNEL.tmp/root/usr/lib/modules/$KVER
	[ -d "$M" ] || die "no modules for $KVER in $KPKG"
	# drop hardware a qemu guest never has, to keep the root image small
	(cd "$M/kernel" && rm -rf sound drivers/gpu drivers/media drivers/infiniband drivers/net/wireless \
		drivers/net/ethernet drivers/staging drivers/usb drivers/bluetooth drivers/iio drivers/isdn \
		drivers/scsi drivers/hid net/wireless net/mac80211 net/bluetooth)
	depmod -b "$KERNEL.tmp/root/usr" "$KVER"
	cp "$KERNEL.tmp/root/boot/vmlinuz-$KVER" "$KERNEL.tmp/vmlinuz"
	# the initramfs modules, in load order, decompressed for busybox insmod
	mkdir -p "$KERNEL.tmp/initrd-modules"
	modprobe -d "$KERNEL.tmp/root/usr" -S "$KVER" --show-depends -a $INITRD_MODULES 2>/dev/null |
		awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' >"$KERNEL.tmp/initrd-modules.paths"
	: >"$KERNEL.tmp/initrd-modules/load.list"
	while read -r ko; do
		f=$(basename "$ko")
		case "$f" in
		*.ko.xz) xz -dc "$ko" >"$KERNEL.tmp/initrd-modules/${f%.xz}"; f=${f%.xz} ;;
		*.ko.zst) zstd -qdc "$ko" >"$KERNEL.tmp/initrd-modules/${f%.zst}"; f=${f%.zst} ;;
		*.ko.gz) gzip -dc "$ko" >"$KERNEL.tmp/initrd-modules/${f%.gz}"; f=${f%.gz} ;;
		*) cp "$ko" "$KERNEL.tmp/initrd-modules/$f" ;;
		esac
		echo "$f" >>"$KERNEL.tmp/initrd-modules/load.list"
	done <"$KERNEL.tmp/initrd-modules.paths"
	grep -q virtio_blk "$KERNEL.tmp/initrd-modules/load.list" || log "virtio_blk is built in (no module)"
	echo "$KVER" >"$KERNEL.tmp/kver"
	touch "$KERNEL.tmp/.done"; mv "$KERNEL.tmp" "$KERNEL"
fi
phase_end
# <<< kernel

# >>> busybox
phase_start busybox
BBVER=$(apt-cache policy busybox-static | awk '/Candidate:/{print $2}')
BUSYBOX=$CACHE/busybox-static-${BBVER//:/_}
if [ ! -f "$BUSYBOX/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$BUSYBOX" "$BUSYBOX.tmp"; mkdir -p "$BUSYBOX.tmp/deb"
	(cd "$BUSYBOX.tmp/deb" && apt-get download -q "busybox-static=$BBVER" >&2)
	dpkg-deb -x "$BUSYBOX.tmp"/deb/*.deb "$BUSYBOX.tmp/x"
	cp "$BUSYBOX.tmp/x/bin/busybox" "$BUSYBOX.tmp/busybox"
	rm -rf "$BUSYBOX.tmp/deb" "$BUSYBOX.tmp/x"
	touch "$BUSYBOX.tmp/.done"; mv "$BUSYBOX.tmp" "$BUSYBOX"
fi
phase_end
# <<< busybox

# >>> debootstrap
phase_start debootstrap
MIRROR=$(apt_mirror)
BASE=$CACHE/debootstrap-$SUITE-minbase-$(stage_hash debootstrap "$GUEST_PACKAGES" "$MIRROR")
if [ ! -f "$BASE/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$BASE" "$BASE.tmp"
	log "debootstrap $SUITE from $MIRROR (+ $GUEST_PACKAGES)"
	debootstrap --variant=minbase --include="$GUEST_PACKAGES" "$SUITE" "$BASE.tmp" "$MIRROR" >&2 ||
		{ tail -n 30 "$BASE.tmp/debootstrap/debootstrap.log" >&2 || true; die "debootstrap failed"; }
	rm -rf "$BASE.tmp/var/cache/apt/archives/"*.deb "$BASE.tmp/var/lib/apt/lists/"*
	touch "$BASE.tmp/.done"; mv "$BASE.tmp" "$BASE"
fi
phase_end
# <<< debootstrap

# >>> images
# Container images, built as one docker-archive tarball (several images that
# share one busybox layer) for `ctr -n k8s.io images import`.
phase_start images
IMAGES=$CACHE/images-busybox-${BBVER//:/_}-$(stage_hash images "$PAUSE_IMAGE")
if [ ! -f "$IMAGES/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$IMAGES" "$IMAGES.tmp"; mkdir -p "$IMAGES.tmp/rootfs" "$IMAGES.tmp/archive"
	r=$IMAGES.tmp/rootfs
	mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/var/www" "$r/home/default-user" "$r/dev" "$r/proc" "$r/sys"
	chmod 1777 "$r/tmp"
	cp "$BUSYBOX/busybox" "$r/bin/busybox"
	for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
	cat >"$r/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
PW
	cat >"$r/etc/group" <<'GR'
root:x:0:
daemon:x:1:
www-data:x:33:
default-user:x:1000:
group-defined-in-image:x:50000:default-user
nogroup:x:65534:
GR
	echo '<html><body>armorshim integration web server</body></html>' >"$r/var/www/index.html"
	# stand-ins for critest's nginx and httpd images: busybox httpd on port 80,
	# an "nginx" process that writes /var/run/nginx.pid, an httpd that logs "httpd"
	mkdir -p "$r/usr/sbin" "$r/var/run"
	cat >"$r/usr/sbin/nginx" <<'NGINX'
#!/bin/sh
echo $$ >/var/run/nginx.pid
httpd -f -p 80 -h /var/www &
trap 'kill $!; exit 0' TERM INT
wait
NGINX
	cat >"$r/usr/sbin/httpd-foreground" <<'HTTPD'
#!/bin/sh
echo "httpd: serving /var/www on port 80"
exec httpd -f -vv -p 80 -h /var/www
HTTPD
	chmod 0755 "$r/usr/sbin/nginx" "$r/usr/sbin/httpd-foreground"
	chown 1000:1000 "$r/home/default-user"
	a=$IMAGES.tmp/archive
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$r" -cf "$a/layer.tar" .
	DIFFID=$(sha256sum "$a/layer.tar" | cut -d' ' -f1)
	mkdir -p "$a/$DIFFID"; mv "$a/layer.tar" "$a/$DIFFID/layer.tar"
	MANIFEST=
	# add_image TAGS(comma separated) CONFIG-JSON-FRAGMENT
	add_image() {
		local cfg sha tags
		cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"]$2},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFFID\"]}}"
		sha=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
		printf '%s' "$cfg" >"$a/$sha.json"
		tags=$(echo "$1" | sed 's/[^,]*/"&"/g')
		MANIFEST="$MANIFEST${MANIFEST:+,}{\"Config\":\"$sha.json\",\"RepoTags\":[$tags],\"Layers\":[\"$DIFFID/layer.tar\"]}"
	}
	E2E=registry.k8s.io/e2e-test-images
	CRIT=gcr.io/k8s-staging-cri-tools
	# pause: sleeps until killed, reaping children
	add_image "$PAUSE_IMAGE" ',"Entrypoint":["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]'
	# the busybox image critest and the scenarios use
	add_image "$E2E/busybox:1.29-2,$E2E/busybox:1.36.1-1,docker.io/library/busybox:latest" ',"Cmd":["sh"]'
	# web servers (busybox httpd on port 80) under the names critest uses
	add_image "$E2E/nginx:1.14-2" ',"Entrypoint":["/usr/sbin/nginx"],"ExposedPorts":{"80/tcp":{}}'
	add_image "$E2E/httpd:2.4.39-4" ',"Entrypoint":["/usr/sbin/httpd-foreground"],"ExposedPorts":{"80/tcp":{}}'
	# critest's images whose config names a user
	add_image "$CRIT/test-image-user-uid:latest" ',"Cmd":["sh"],"User":"1002"'
	add_image "$CRIT/test-image-user-username:latest" ',"Cmd":["sh"],"User":"www-data"'
	add_image "$CRIT/test-image-user-uid-group:latest" ',"Cmd":["sh"],"User":"1003:1004"'
	add_image "$CRIT/test-image-user-username-group:latest" ',"Cmd":["sh"],"User":"www-data:1004"'
	add_image "$CRIT/test-image-predefined-group:latest" ',"Cmd":["sh"],"User":"1000"'
	echo "[$MANIFEST]" >"$a/manifest.json"
	tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$a" -cf "$IMAGES.tmp/images.tar" .
	rm -rf "$IMAGES.tmp/rootfs" "$IMAGES.tmp/archive"
	touch "$IMAGES.tmp/.done"; mv "$IMAGES.tmp" "$IMAGES"
fi
phase_end
# <<< images

# >>> rootfs
# The guest's root disk: the debootstrap base + kernel modules + binaries +
# images, as an ext4 image (qemu attaches it with snapshot=on).
phase_start rootfs
ROOTFS=$CACHE/rootfs-$SUITE-$KVER-containerd-$CONTAINERD_VERSION-$(stage_hash rootfs "${BASE##*/}" "${KERNEL##*/}" "${BINS##*/}" "${IMAGES##*/}" "${GINKGO##*/}" "${KUBELET##*/}" "${CONTROLPLANE##*/}" "${NFD##*/}")
if [ ! -f "$ROOTFS/.done" ]; then
	PHASE_CACHED=false
	rm -rf "$ROOTFS" "$ROOTFS.tmp"; mkdir -p "$ROOTFS.tmp"
	t=$ROOTFS.tmp/tree
	cp -a "$BASE" "$t"; rm -f "$t/.done"
	mkdir -p "$t/usr/lib/modules"
	cp -a "$KERNEL/root/usr/lib/modules/$KVER" "$t/usr/lib/modules/"
	for b in containerd ctr containerd-shim-runc-v2 runc crictl critest; do install -m 0755 "$BINS/$b" "$t/usr/local/bin/$b"; done
	install -m 0755 "$GINKGO/ginkgo" "$t/usr/local/bin/ginkgo"
	install -m 0755 "$KUBELET/kubelet" "$t/usr/local/bin/kubelet"
	for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do install -m 0755 "$CONTROLPLANE/$b" "$t/usr/local/bin/$b"; done
	for b in nfd-master nfd-worker; do install -m 0755 "$NFD/$b" "$t/usr/local/bin/$b"; done
	mkdir -p "$t/opt/armorshim-it"
	install -m 0644 "$NFD/nfd-api-crds.yaml" "$t/opt/armorshim-it/nfd-api-crds.yaml"
	cp "$IMAGES/images.tar" "$t/opt/armorshim-it/images.tar"
	# debootstrap minbase has no /etc/hosts (RunPodSandbox needs it)
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tarmorshim-guest\n' >"$t/etc/hosts"
	echo armorshim-guest >"$t/etc/hostname"
	echo 'nameserver 127.0.0.1' >"$t/etc/resolv.conf"
	mkdir -p "$t/var/lib/containerd" "$t/var/lib/cni" "$t/etc/containerd" "$t/etc/cni/net.d" "$t/run" "$t/newroot"
	size=$(( $(du -sm "$t" | cut -f1) * 12 / 10 + 256 ))
	mkfs.ext4 -q -F -L armorshim-root -E root_owner=0:0 -d "$t" "$ROOTFS.tmp/rootfs.ext4" "${size}M" >/dev/null
	rm -rf "$t"
	touch "$ROOTFS.tmp/.done"; mv "$ROOTFS.tmp" "$ROOTFS"
fi
phase_end
# <<< rootfs

# >>> nfpm
# nfpm, which builds the Debian package the main boot installs: built by
# packaging/deb.sh from packaging/tools/go.mod into the cache, once per
# version (as make deb does).
phase_start nfpm
NFPM_BEFORE=$(ls -d "$CACHE"/nfpm-* 2>/dev/null || true)
if NFPM=$(ARMORSHIM_CACHE=$CACHE GO=go sh "$REPO/packaging/deb.sh" nfpm); then
	case " $(echo $NFPM_BEFORE) " in
	*" ${NFPM%/nfpm} "*) ;;
	*) PHASE_CACHED=false ;;
	esac
else
	PHASE_CACHED=false
	NFPM=
	log "nfpm does not build: the main boot reports the Debian package's steps as failed"
fi
phase_end
# <<< nfpm

# Per run (not cached): armorshim from this checkout, the initramfs that
# carries it with the guest scripts, and an empty disk for the artefacts the
# guest hands back (a tar archive written straight onto the device).
phase_start payload
PHASE_CACHED=false
rm -rf "$OUT/initrd" "$OUT/initrd.cpio" "$OUT/out-main.img" "$OUT/out-noaa.img" "$OUT/out-kubelet.img" "$OUT/out-cluster.img" "$OUT/out-fleet.img"
i=$OUT/initrd
mkdir -p "$i/bin" "$i/proc" "$i/sys" "$i/dev" "$i/newroot" "$i/modules" "$i/payload"
cp "$BUSYBOX/busybox" "$i/bin/busybox"
cp "$KERNEL/initrd-modules/"* "$i/modules/"
cp "$HERE/guest/init" "$i/init"; chmod 0755 "$i/init"
cp -r "$HERE/guest/." "$i/payload/"
rm -f "$i/payload/init"
# the cluster boot applies the shipped profiles DaemonSet as a user would
cp "$REPO/deploy/profiles-daemonset.yaml" "$i/payload/" 2>/dev/null ||
	log "no deploy/profiles-daemonset.yaml: the cluster boot reports its step as failed"
if (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$i/payload/armorshim" ./cmd/armorshim) >&2; then
	emit armorshim built
else
	log "armorshim does not build from this checkout: the guest reports every step through it as not run"
	emit armorshim missing
fi
# the Debian package, built as make deb builds it (a stripped static
# binary with the version, packaging/deb.sh), which the main boot installs,
# removes and purges
DESCRIBE=$(git -C "$REPO" describe --tags --always --dirty 2>/dev/null || echo dev)
if [ -n "$NFPM" ] &&
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$DESCRIBE -s -w" -o "$OUT/armorshim-deb" ./cmd/armorshim) >&2 &&
	DEB=$(ARMORSHIM_CACHE=$CACHE GO=go ARMORSHIM_BIN="$OUT/armorshim-deb" VERSION=$DESCRIBE sh "$REPO/packaging/deb.sh" build "$i/payload"); then
	emit deb "${DEB##*/}"
else
	log "no Debian package: the main boot reports its steps as failed"
	emit deb missing
fi
rm -f "$OUT/armorshim-deb"
# the fleet boot: deploy/installer.yaml and two installer images (make
# installer-image's build, versions <describe>-it1 and -it2: an upgrade)
FLEET_OK=true
cp "$REPO/deploy/installer.yaml" "$i/payload/" 2>/dev/null || FLEET_OK=false
for v in "$DESCRIBE-it1" "$DESCRIBE-it2"; do
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$v -s -w" -o "$OUT/fleet-armorshim" ./cmd/armorshim &&
		CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$v -s -w" -o "$OUT/fleet-installer" ./cmd/armorshim-installer &&
		go run ./deploy/installer --version "$v" --armorshim "$OUT/fleet-armorshim" --installer "$OUT/fleet-installer" \
			--systemd systemd --out "$i/payload/installer-$v.oci.tar") >&2 || FLEET_OK=false
done
rm -f "$OUT/fleet-armorshim" "$OUT/fleet-installer"
if $FLEET_OK; then
	echo "$DESCRIBE-it1 $DESCRIBE-it2" >"$i/payload/installer-versions"
	emit installer "$DESCRIBE-it1 $DESCRIBE-it2"
else
	log "the installer images do not build: the fleet boot reports its steps as failed"
	emit installer missing
fi
# the kubelet tier's CRI recorder, and what the Go test generated for the
# guest (the Pod Security Admission fixtures as static pods)
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$i/payload/crirecord" ./integration/crirecord) >&2 ||
	log "crirecord does not build: the kubelet tier cannot start"
[ -d "$OUT/payload-extra" ] && cp -r "$OUT/payload-extra/." "$i/payload/"
(cd "$i" && find . | cpio -o -H newc --quiet) >"$OUT/initrd.cpio"
rm -rf "$i"
truncate -s 256M "$OUT/out-main.img" "$OUT/out-noaa.img" "$OUT/out-kubelet.img" "$OUT/out-cluster.img" "$OUT/out-fleet.img"
phase_end

emit kernel "$KERNEL/vmlinuz"
emit kver "$KVER"
emit kernel_package "$KPKG=$KDEB_VER"
emit rootfs "$ROOTFS/rootfs.ext4"
emit initrd "$OUT/initrd.cpio"
emit out_main "$OUT/out-main.img"
emit out_noaa "$OUT/out-noaa.img"
emit out_kubelet "$OUT/out-kubelet.img"
emit out_cluster "$OUT/out-cluster.img"
emit out_fleet "$OUT/out-fleet.img"
emit containerd "$CONTAINERD_VERSION"
emit runc "$RUNC_VERSION"
emit critools "$CRITOOLS_VERSION"
emit ginkgo "$GINKGO_VERSION"
emit kubelet "$KUBERNETES_VERSION"
emit etcd "$(cat "$CONTROLPLANE/etcd.version")"
emit nfd "$NFD_VERSION"
emit mirror "$MIRROR"
