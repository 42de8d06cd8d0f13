# armorshim. `make demo` builds and shows it at work; `make test` runs every test.
GO       ?= go
PREFIX   ?= /usr/local
DESTDIR  ?=
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
FUZZTIME ?= 10s
FUZZ_PKGS := ./apparmor ./host ./cri/h2relay

.PHONY: all build demo test unit monitoring fuzz conformance integration record-kubelet bench install uninstall install-socket-activation deb installer-image clean FORCE

all: build

build: bin/armorshim

bin/armorshim: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cmd/armorshim

# The binary the Debian package ships: static (no libc dependency), stripped.
bin/armorshim-static: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $@ ./cmd/armorshim

# The installer the DaemonSet of deploy/installer.yaml runs: static, stripped.
bin/armorshim-installer: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $@ ./cmd/armorshim-installer

# dist/armorshim-installer_<version>.oci.tar: the installer's image, an OCI
# archive built without a registry or container tools (deploy/installer);
# `ctr -n k8s.io images import` it, or copy it to a registry.
installer-image: bin/armorshim-static bin/armorshim-installer
	@mkdir -p dist
	$(GO) run ./deploy/installer --version $(VERSION) --armorshim bin/armorshim-static \
	  --installer bin/armorshim-installer --systemd systemd --out dist/armorshim-installer_$(VERSION).oci.tar

# A fake CRI runtime, a fake securityfs and the real armorshim in between:
# one container forwarded, one blocked, then allowed once its profile loads.
demo: build
	$(GO) run ./cmd/armorshim-demo --armorshim bin/armorshim

# Everything CI runs.
test: unit monitoring fuzz conformance integration

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

# promtool checks deploy/monitoring's alert rules, runs their unit tests and
# parses the dashboard's queries; it is built from
# deploy/monitoring/tools/go.mod and cached (ARMORSHIM_CACHE). That the rules
# and the dashboard name only exported metrics and labels is a Go test
# (shim/monitoring_test.go, in `unit`).
monitoring:
	GO=$(GO) sh deploy/monitoring/promtool.sh

# Each fuzz target for FUZZTIME, after its seed corpus ran in `unit`. Go
# 1.26's coordinator can fail a target with a bare "context deadline
# exceeded" when FUZZTIME ends (golang/go#75804, fixed in Go 1.27): such a
# run, with no failing input written, is run once more; any other failure
# fails.
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for pkg in $(FUZZ_PKGS); do \
	  targets=$$($(GO) test -list '^Fuzz' $$pkg) || { echo "$$targets"; exit 1; }; \
	  for target in $$(echo "$$targets" | grep '^Fuzz'); do \
	    for try in 1 2; do \
	      echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
	      if $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg >$$log 2>&1; then cat $$log; break; fi; \
	      cat $$log; \
	      if [ $$try = 1 ] && grep -q '^    context deadline exceeded$$' $$log && ! grep -q 'Failing input written' $$log; then \
	        echo "fuzz: $$target hit Go's fuzztime race (golang/go#75804), no failing input: once more"; continue; \
	      fi; \
	      exit 1; \
	    done; \
	  done; \
	done

# Side by side in one run: direct vs armorshim vs a typed proxy vs a byte
# relay (docs/performance.md), then the hot functions.
bench:
	$(GO) run ./cmd/armorshim-bench
	$(GO) test -run '^$$' -bench . -benchtime 200ms ./apparmor ./host ./cri ./cri/h2relay

# h2spec and gRPC-Go's interop client against gRPC-Go's interop server,
# directly and through the relay and bin/armorshim: no case may fail through
# armorshim that passes directly (docs/conformance.md). Builds its tools
# from conformance/tools/go.mod and caches them (ARMORSHIM_CACHE).
conformance: build
	$(GO) vet -tags conformance ./conformance/
	ARMORSHIM_BIN=$(CURDIR)/bin/armorshim GO=$(GO) $(GO) test -tags conformance -v -count=1 -timeout 20m ./conformance/

# The VM suite: a qemu guest with AppArmor, containerd, runc, crictl and
# critest (integration/README.md). Needs root; caches its builds.
integration:
	$(GO) test -tags integration -v -count=1 -timeout 80m ./integration/

# Regenerates cri/testdata/kubelet, the CRI requests a real kubelet sends
# for the Pod Security Admission fixtures, from the VM suite's kubelet boot.
record-kubelet:
	ARMORSHIM_RECORD=1 ARMORSHIM_PSA=all ARMORSHIM_IT_BOOTS=kubelet $(GO) test -tags integration -v -count=1 -timeout 150m -run '^TestIntegration$$' ./integration/

# install copies what `make build` built: it does not build, so it runs as
# root without Go on root's PATH.
install:
	@test -x bin/armorshim || { echo "bin/armorshim is missing: run 'make build' first, as your user; install does not build" >&2; exit 1; }
	install -D -m 0755 bin/armorshim $(DESTDIR)$(PREFIX)/bin/armorshim
	install -D -m 0644 systemd/armorshim.service $(DESTDIR)/etc/systemd/system/armorshim.service
	install -D -m 0644 systemd/armorshim.socket $(DESTDIR)/etc/systemd/system/armorshim.socket
	install -d -m 0755 $(DESTDIR)/etc/armorshim/profiles.d
	@if [ -e $(DESTDIR)/etc/armorshim/config.yaml ]; then \
	  echo "keeping existing $(DESTDIR)/etc/armorshim/config.yaml"; \
	else \
	  install -D -m 0644 systemd/config.yaml $(DESTDIR)/etc/armorshim/config.yaml; \
	fi
	DESTDIR="$(DESTDIR)" SRC=systemd sh systemd/kubelet-dropins.sh install
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; \
	fi

# uninstall puts the kubelet back on containerd first (drop-ins removed, the
# kubelet restarted if it runs), then stops and removes armorshim. The
# configuration and profiles in /etc/armorshim stay.
uninstall:
	DESTDIR="$(DESTDIR)" SRC=systemd sh systemd/kubelet-dropins.sh uninstall
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; \
	  if systemctl is-active --quiet kubelet; then echo "restarting the kubelet onto containerd"; systemctl restart kubelet; fi; \
	  systemctl disable --now armorshim.socket armorshim.service 2>/dev/null || true; \
	fi
	rm -f $(DESTDIR)$(PREFIX)/bin/armorshim $(DESTDIR)/etc/systemd/system/armorshim.service $(DESTDIR)/etc/systemd/system/armorshim.socket
	rm -rf $(DESTDIR)/etc/systemd/system/armorshim.service.d
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(DESTDIR)/etc/armorshim (configuration and profiles); remove it yourself if unwanted"

# Switch an installed node to systemd socket activation.
install-socket-activation: install
	install -D -m 0644 systemd/armorshim.service.d/10-socket-activation.conf $(DESTDIR)/etc/systemd/system/armorshim.service.d/10-socket-activation.conf
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; \
	fi

# dist/armorshim_<version>_<arch>.deb (packaging/nfpm.yaml, README "Debian
# package"), built with nfpm from the module proxy (packaging/tools/go.mod,
# cached like the other suites' tools), then checked by lintian (installed
# with apt-get when missing and run as root; skipped, and said so, otherwise).
deb: bin/armorshim-static
	@deb=$$(ARMORSHIM_BIN=bin/armorshim-static VERSION=$(VERSION) GO=$(GO) sh packaging/deb.sh build dist) && \
	echo "wrote $$deb" && sh packaging/deb.sh lintian "$$deb"

clean:
	rm -rf bin dist
