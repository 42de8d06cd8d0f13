package cri

import (
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// The relay routes and decides calls by their HTTP/2 :path, but the backend
// routes them its own way. gRPC-Go servers before 1.79.3 (containerd 2.1
// pins 1.72.2), and later ones run with
// GRPC_GO_EXPERIMENTAL_DISABLE_STRICT_PATH_CHECKING, strip an optional
// leading "/" and split the rest at its last "/" (CVE-2026-33186), so
// "runtime.v1.RuntimeService/CreateContainer" reaches CreateContainer there.
// containerd 1.6 and 1.7 also serve CRI v1alpha2, whose CreateContainer
// creates containers just the same. armorshim holds and decides only
// canonical CRI v1 paths, so every other path that a backend could take for
// a CRI call is turned away before it reaches one.

// criVersion is the only CRI version armorshim relays.
const criVersion = "v1"

// maxQuotedPath bounds the part of a refused path that armorshim repeats
// in its answer and its log.
const maxQuotedPath = 256

// pathRefusal returns the status refusing a call on path, or nil to relay
// it: a path any server could take for a CRI call must be canonical
// ("/runtime.v1.RuntimeService/<Method>", "/runtime.v1.ImageService/<Method>"),
// and a CRI call of another version than v1 is not relayed. Other paths
// (armorshim's health service, services that are not CRI, a service name
// in another case, which gRPC-Go does not route to CRI) pass.
func pathRefusal(path string) *status.Status {
	// The kubelet's calls: canonical v1, decided in one pass.
	for _, prefix := range [...]string{"/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"} {
		if m, ok := strings.CutPrefix(path, prefix); ok && isMethodName(m) {
			return nil
		}
	}
	service, version, ok := criServiceOf(path)
	if !ok {
		return nil
	}
	if m, ok := strings.CutPrefix(path, "/"+service+"/"); !ok || !isMethodName(m) {
		return status.Newf(codes.Unimplemented, "armorshim: malformed method name: %s", quotePath(path))
	}
	if version != criVersion {
		return status.Newf(codes.Unimplemented, "armorshim: unknown service %s: armorshim serves CRI %s only", service, criVersion)
	}
	return nil
}

// criServiceOf returns the CRI service a server could take path to call,
// and its version. It reads path as loosely as any server might:
//   - gRPC-Go strips one leading "/" (optional before 1.79.3) and takes the
//     service up to the last "/" (the method has no "/");
//   - a server behind net/http (grpc.Server.ServeHTTP) routes by the URL's
//     path: without the query, percent-decoded.
//
// To stay on the safe side it also drops every leading "/" and surrounding
// blanks, and takes the service up to the first "/": anything that looks
// like a CRI service followed by more is a CRI call. Names are matched
// case-sensitively, as gRPC-Go matches them.
func criServiceOf(path string) (service, version string, ok bool) {
	p, _, _ := strings.Cut(path, "?")
	if strings.Contains(p, "%") {
		if u, err := url.PathUnescape(p); err == nil {
			p = u
		}
	}
	p = strings.TrimLeft(strings.Trim(p, " \t"), "/")
	service, _, _ = strings.Cut(p, "/")
	rest, ok := strings.CutPrefix(service, "runtime.")
	if !ok {
		return "", "", false
	}
	version, name, ok := strings.Cut(rest, ".")
	if !ok || version == "" || (name != "RuntimeService" && name != "ImageService") {
		return "", "", false
	}
	return service, version, true
}

// isMethodName reports whether m is a protobuf method name: letters, digits
// and underscores.
func isMethodName(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// quotePath quotes a path for a message, cut to maxQuotedPath bytes.
func quotePath(path string) string {
	if len(path) > maxQuotedPath {
		return strconv.Quote(path[:maxQuotedPath]) + "..."
	}
	return strconv.Quote(path)
}

// refusePath logs a refused path and returns the backend that answers it.
func refusePath(st *status.Status) *h2relay.Backend {
	klog.InfoS("Refused a call on a path armorshim does not relay", "message", st.Message())
	return h2relay.Refuse(st)
}
