package cri

import (
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainerMethod is the method armorshim always decodes.
const CreateContainerMethod = "/runtime.v1.RuntimeService/CreateContainer"

// StartContainerMethod is decoded when start attestation is on.
const StartContainerMethod = "/runtime.v1.RuntimeService/StartContainer"

const imageServicePrefix = "/runtime.v1.ImageService/"

// Shape says how a known method streams.
type Shape int

const (
	Unknown      Shape = iota // not in cri-api: forwarded as a bidirectional stream
	Unary                     // one message each way
	ServerStream              // one request, a stream of responses
)

// Methods lists every CRI v1 method cri-api knows, by full method name, with
// its shape. It is read from the service descriptors, so a new RPC in a newer
// cri-api is never forgotten.
var Methods = func() map[string]Shape {
	m := map[string]Shape{}
	services := runtimeapi.File_staging_src_k8s_io_cri_api_pkg_apis_runtime_v1_api_proto.Services()
	for i := 0; i < services.Len(); i++ {
		svc := services.Get(i)
		methods := svc.Methods()
		for j := 0; j < methods.Len(); j++ {
			md := methods.Get(j)
			m[fullMethod(svc, md)] = shapeOf(md)
		}
	}
	return m
}()

func fullMethod(svc protoreflect.ServiceDescriptor, md protoreflect.MethodDescriptor) string {
	return "/" + string(svc.FullName()) + "/" + string(md.Name())
}

func shapeOf(md protoreflect.MethodDescriptor) Shape {
	switch {
	case md.IsStreamingClient():
		return Unknown // none in CRI v1 today; forward fully duplex
	case md.IsStreamingServer():
		return ServerStream
	}
	return Unary
}

func isImageMethod(method string) bool {
	return strings.HasPrefix(method, imageServicePrefix)
}

// Container and sandbox calls decoded while denials are attributed, to
// keep the denial index current.
const (
	stopContainerMethod    = "/runtime.v1.RuntimeService/StopContainer"
	removeContainerMethod  = "/runtime.v1.RuntimeService/RemoveContainer"
	stopPodSandboxMethod   = "/runtime.v1.RuntimeService/StopPodSandbox"
	removePodSandboxMethod = "/runtime.v1.RuntimeService/RemovePodSandbox"
)
