// Package conformance runs an HTTP/2 conformance suite (h2spec) and gRPC-Go's
// interop client against gRPC-Go's interop server twice: directly, and
// through armorshim's relay (cri/h2relay) and the real armorshim binary.
// A case that passes directly must pass through armorshim too; see
// docs/conformance.md.
//
// The suite only builds with the "conformance" build tag; it builds its
// tools from the Go module versions pinned in tools/go.mod and caches them:
//
//	go test -tags conformance -v -count=1 ./conformance/
package conformance
