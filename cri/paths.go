package cri

import (
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// armorshim relays the CRI and nothing else. The runtime endpoint is
// containerd's socket, which also serves containerd's native API
// (containerd.services.containers.v1.Containers/Create,
// containerd.services.tasks.v1.Tasks/Create, ...): relayed, it would create
// and start containers with any OCI spec, past every check. So only the
// services of CRI v1 reach a backend, known methods and new ones alike;
// armorshim's own health service is served locally (Proxy.Route), and every
// other service is refused before anything reaches a backend.
//
// The relay routes and decides calls by their HTTP/2 :path, but the backend
// routes them its own way. gRPC-Go servers before 1.79.3 (containerd 2.1
// pins 1.72.2), and later ones run with
// GRPC_GO_EXPERIMENTAL_DISABLE_STRICT_PATH_CHECKING, strip an optional
// leading "/" and split the rest at its last "/" (CVE-2026-33186), so
// "runtime.v1.RuntimeService/CreateContainer" reaches CreateContainer there.
// containerd 1.6 and 1.7 also serve CRI v1alpha2, whose CreateContainer
// creates containers just the same. armorshim relays, holds and decides
// only canonical CRI v1 paths, so every other path is turned away, with a
// message saying why.

// criVersion is the only CRI version armorshim relays.
const criVersion = "v1"

// maxQuotedPath bounds the part of a refused path that armorshim repeats
// in its answer and its log.
const maxQuotedPath = 256

// pathRefusal returns the status refusing a call on path, or nil to relay
// it. Only the canonical paths of CRI v1 are relayed
// ("/runtime.v1.RuntimeService/<Method>", "/runtime.v1.ImageService/<Method>",
// methods cri-api does not know included). Anything a server could take for
// a CRI call in another form, or for a call of another CRI version, is
// refused as such; every other service (containerd's own API, gRPC
// reflection, a service name in another case) as not CRI.
func pathRefusal(path string) *status.Status {
	// The kubelet's calls: canonical v1, decided in one pass.
	for _, prefix := range [...]string{"/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"} {
		if m, ok := strings.CutPrefix(path, prefix); ok && isMethodName(m) {
			return nil
		}
	}
	if service, version, ok := criServiceOf(path); ok {
		if m, ok := strings.CutPrefix(path, "/"+service+"/"); !ok || !isMethodName(m) {
			return malformedPath(path)
		}
		if version != criVersion {
			return status.Newf(codes.Unimplemented, "armorshim: unknown service %s: armorshim serves CRI %s only", service, criVersion)
		}
	}
	service, method, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok || !strings.HasPrefix(path, "/") || !isServiceName(service) || !isMethodName(method) {
		return malformedPath(path)
	}
	return status.Newf(codes.Unimplemented, "armorshim: unknown service %s: armorshim relays the CRI (runtime.%s) only", service, criVersion)
}

// malformedPath refuses a path that is no "/<service>/<method>".
func malformedPath(path string) *status.Status {
	return status.Newf(codes.Unimplemented, "armorshim: malformed method name: %s", quotePath(path))
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

// isServiceName reports whether s is a protobuf service's full name as
// armorshim repeats it: dot-separated names, at most maxQuotedPath bytes.
func isServiceName(s string) bool {
	if len(s) > maxQuotedPath {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if !isMethodName(part) {
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
func (p *Proxy) refusePath(st *status.Status) *h2relay.Backend {
	p.logs.InfoS("Refused a call on a path armorshim does not relay", "message", st.Message())
	return h2relay.Refuse(st)
}
