// Package integration holds armorshim's VM-based integration suite: a qemu
// guest with Debian's AppArmor kernel runs containerd and runc behind
// armorshim and is driven with crictl and critest (see README.md).
//
// The suite only builds with the "integration" build tag, so a plain
// `go test ./...` never boots a VM:
//
//	go test -tags integration -v -timeout 80m ./integration/
package integration
