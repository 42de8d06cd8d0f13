package cri

import (
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestPathRefusal(t *testing.T) {
	const malformed = "armorshim: malformed method name: "
	notCRI := func(service string) string {
		return "armorshim: unknown service " + service + ": armorshim relays the CRI (runtime.v1) only"
	}
	for _, c := range []struct {
		path string
		want string // the refusal's message; "" when relayed
	}{
		// Canonical CRI v1, decided or not, known or not: relayed.
		{"/runtime.v1.RuntimeService/CreateContainer", ""},
		{"/runtime.v1.RuntimeService/StartContainer", ""},
		{"/runtime.v1.ImageService/PullImage", ""},
		{"/runtime.v1.RuntimeService/FutureMethod", ""},
		{"/runtime.v1.ImageService/FutureMethod", ""},
		{"/runtime.v1.RuntimeService/createContainer", ""}, // an unknown method to any server
		// Not CRI: refused, the service named (armorshim's health service
		// is routed before, by Proxy.Route).
		{"/grpc.health.v1.Health/Check", notCRI("grpc.health.v1.Health")},
		{"/future.v9.Chat/Talk", notCRI("future.v9.Chat")},
		{"/containerd.services.containers.v1.Containers/Create", notCRI("containerd.services.containers.v1.Containers")},
		{"/containerd.services.tasks.v1.Tasks/Create", notCRI("containerd.services.tasks.v1.Tasks")},
		{"/containerd.services.version.v1.Version/Version", notCRI("containerd.services.version.v1.Version")},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", notCRI("grpc.reflection.v1.ServerReflection")},
		{"/runtime.v1.FutureService/Call", notCRI("runtime.v1.FutureService")},
		{"/RUNTIME.V1.RUNTIMESERVICE/CREATECONTAINER", notCRI("RUNTIME.V1.RUNTIMESERVICE")},
		{"/Runtime.v1.RuntimeService/CreateContainer", notCRI("Runtime.v1.RuntimeService")},
		{"/S/M", notCRI("S")},
		// Not even a service and a method: refused as malformed.
		{"/foo/runtime.v1.RuntimeService/CreateContainer", malformed + `"/foo/runtime.v1.RuntimeService/CreateContainer"`},
		{"containerd.services.tasks.v1.Tasks/Create", malformed + `"containerd.services.tasks.v1.Tasks/Create"`},
		{"/containerd.services.tasks.v1.Tasks/Create?x", malformed + `"/containerd.services.tasks.v1.Tasks/Create?x"`},
		{"/containerd..Tasks/Create", malformed + `"/containerd..Tasks/Create"`},
		{"/.Tasks/Create", malformed + `"/.Tasks/Create"`},
		{"/Tasks/", malformed + `"/Tasks/"`},
		{"/Tasks", malformed + `"/Tasks"`},
		{"/ä.S/M", malformed + `"/ä.S/M"`},
		{"/" + strings.Repeat("s", 300) + "/M", malformed + `"/` + strings.Repeat("s", 255) + `"...`},
		{"", malformed + `""`},
		{"/", malformed + `"/"`},
		// gRPC-Go before 1.79.3 routes these to the method.
		{"runtime.v1.RuntimeService/CreateContainer", malformed + `"runtime.v1.RuntimeService/CreateContainer"`},
		{"runtime.v1.ImageService/PullImage", malformed + `"runtime.v1.ImageService/PullImage"`},
		{"runtime.v1alpha2.RuntimeService/CreateContainer", malformed + `"runtime.v1alpha2.RuntimeService/CreateContainer"`},
		// containerd 1.6 and 1.7 serve CRI v1alpha2.
		{"/runtime.v1alpha2.RuntimeService/CreateContainer", "armorshim: unknown service runtime.v1alpha2.RuntimeService: armorshim serves CRI v1 only"},
		{"/runtime.v1alpha2.RuntimeService/RunPodSandbox", "armorshim: unknown service runtime.v1alpha2.RuntimeService: armorshim serves CRI v1 only"},
		{"/runtime.v1alpha2.ImageService/PullImage", "armorshim: unknown service runtime.v1alpha2.ImageService: armorshim serves CRI v1 only"},
		{"/runtime.v2.RuntimeService/CreateContainer", "armorshim: unknown service runtime.v2.RuntimeService: armorshim serves CRI v1 only"},
		// No gRPC-Go server routes these to CRI, but they look like CRI
		// calls: refused rather than guessed at.
		{"//runtime.v1.RuntimeService/CreateContainer", malformed + `"//runtime.v1.RuntimeService/CreateContainer"`},
		{"/runtime.v1.RuntimeService/", malformed + `"/runtime.v1.RuntimeService/"`},
		{"/runtime.v1.RuntimeService", malformed + `"/runtime.v1.RuntimeService"`},
		{"/runtime.v1.RuntimeService/CreateContainer/", malformed + `"/runtime.v1.RuntimeService/CreateContainer/"`},
		{"/runtime.v1.RuntimeService/CreateContainer?x=1", malformed + `"/runtime.v1.RuntimeService/CreateContainer?x=1"`},
		{"/runtime.v1.RuntimeService/Create%43ontainer", malformed + `"/runtime.v1.RuntimeService/Create%43ontainer"`},
		{"/runtime.v1.Runtime%53ervice/CreateContainer", malformed + `"/runtime.v1.Runtime%53ervice/CreateContainer"`},
		{"/runtime.v1.RuntimeService%2FCreateContainer", malformed + `"/runtime.v1.RuntimeService%2FCreateContainer"`},
		{"/runtime.v1.RuntimeService/CreateContainer ", malformed + `"/runtime.v1.RuntimeService/CreateContainer "`},
		{" /runtime.v1.RuntimeService/CreateContainer", malformed + `" /runtime.v1.RuntimeService/CreateContainer"`},
		{"/runtime.v1.RuntimeService/Create.Container", malformed + `"/runtime.v1.RuntimeService/Create.Container"`},
		{"/runtime.v1.RuntimeService//CreateContainer", malformed + `"/runtime.v1.RuntimeService//CreateContainer"`},
	} {
		st := pathRefusal(c.path)
		switch {
		case c.want == "" && st != nil:
			t.Errorf("%q: refused (%v), want relayed", c.path, st.Message())
		case c.want != "" && st == nil:
			t.Errorf("%q: relayed, want refused with %q", c.path, c.want)
		case c.want != "" && (st.Code() != codes.Unimplemented || st.Message() != c.want):
			t.Errorf("%q: %v %q, want Unimplemented %q", c.path, st.Code(), st.Message(), c.want)
		}
	}
	long := "runtime.v1.RuntimeService/" + strings.Repeat("x", 1000)
	if msg := pathRefusal(long).Message(); len(msg) > 300 || !strings.HasSuffix(msg, `xxx"...`) {
		t.Errorf("a long path is repeated whole: %d bytes", len(msg))
	}
}

// grpcRoutes returns the service and method every supported gRPC-Go
// server could route path to: gRPC-Go 1.79.3 and later require the leading
// "/", older ones take it as optional; both split at the last "/". A
// server behind net/http (ServeHTTP) routes by the request URL's path.
func grpcRoutes(path string) (routes [][2]string) {
	methods := []string{path}
	if u, err := url.ParseRequestURI(path); err == nil {
		methods = append(methods, u.Path)
	}
	for _, m := range methods {
		sm := strings.TrimPrefix(m, "/") // 1.85's CutPrefix routes a subset
		if i := strings.LastIndex(sm, "/"); i >= 0 {
			routes = append(routes, [2]string{sm[:i], sm[i+1:]})
		}
	}
	return routes
}

// criServices are the services of every CRI version a backend serves.
var criServices = map[string]bool{
	"runtime.v1.RuntimeService": true, "runtime.v1.ImageService": true,
	"runtime.v1alpha2.RuntimeService": true, "runtime.v1alpha2.ImageService": true,
}

// checkNoPathAround fails if a server could route path to a CRI method
// while armorshim neither sees it as that canonical v1 path nor refuses it,
// or if armorshim relays a path that is not a canonical CRI v1 one (any
// other reaches containerd's own API, or nothing).
func checkNoPathAround(t *testing.T, path string) {
	refused := pathRefusal(path) != nil
	if !refused {
		service, method, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
		if !strings.HasPrefix(path, "/") || (service != "runtime.v1.RuntimeService" && service != "runtime.v1.ImageService") || !isMethodName(method) {
			t.Errorf("%q: relayed, but it is no canonical CRI v1 path", path)
		}
	}
	for _, r := range grpcRoutes(path) {
		if !criServices[r[0]] || r[1] == "" {
			continue
		}
		canonical := strings.HasPrefix(r[0], "runtime.v1.") && path == "/"+r[0]+"/"+r[1] && isMethodName(r[1])
		if canonical == refused {
			t.Errorf("%q: a server routes it to %s/%s; canonical %v, refused %v", path, r[0], r[1], canonical, refused)
		}
	}
}

func FuzzNoPathAroundTheChecks(f *testing.F) {
	for _, p := range []string{
		"/runtime.v1.RuntimeService/CreateContainer", "runtime.v1.RuntimeService/CreateContainer",
		"/runtime.v1alpha2.RuntimeService/RunPodSandbox", "runtime.v1alpha2.ImageService/PullImage",
		"//runtime.v1.RuntimeService/StartContainer", "/runtime.v1.RuntimeService/CreateContainer?a=/b",
		"/runtime.v1.Runtime%53ervice/CreateContainer", "/runtime.v1.RuntimeService%2FCreateContainer",
		"/runtime.v1.RuntimeService/%2e%2e/CreateContainer", " /runtime.v1.RuntimeService/CreateContainer",
		"/runtime.v1.RuntimeService/CreateContainer#x", "/runtime.v1.RuntimeService/",
		"/containerd.services.tasks.v1.Tasks/Create", "/runtime.v1.ImageService/FutureMethod",
	} {
		f.Add(p)
	}
	f.Fuzz(checkNoPathAround)
}
