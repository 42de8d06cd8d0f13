package cri

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// inspectLifecycle follows a container or sandbox call for the denial
// index: once the runtime answers OK, the index learns that the container
// stopped or is gone. The call is forwarded unchanged, even one whose
// request cannot be decoded (the runtime answers that).
func (p *Proxy) inspectLifecycle(method string) h2relay.Inspector {
	return func(_ context.Context, in []byte) h2relay.Verdict {
		id, ok := lifecycleID(method, in)
		if !ok {
			return h2relay.Verdict{}
		}
		return h2relay.Verdict{Response: func(_ context.Context, _ []byte, st *status.Status) *status.Status {
			if st.Code() == codes.OK {
				p.denials.lifecycle(method, id)
				if p.learning != nil && (method == removeContainerMethod || method == removePodSandboxMethod) {
					p.learning.removed(method, id)
				}
			}
			return nil
		}}
	}
}

// lifecycleID decodes the container or sandbox ID of a lifecycle request.
func lifecycleID(method string, in []byte) (string, bool) {
	var id string
	switch method {
	case stopContainerMethod:
		req := &runtimeapi.StopContainerRequest{}
		if proto.Unmarshal(in, req) != nil {
			return "", false
		}
		id = req.GetContainerId()
	case removeContainerMethod:
		req := &runtimeapi.RemoveContainerRequest{}
		if proto.Unmarshal(in, req) != nil {
			return "", false
		}
		id = req.GetContainerId()
	case stopPodSandboxMethod:
		req := &runtimeapi.StopPodSandboxRequest{}
		if proto.Unmarshal(in, req) != nil {
			return "", false
		}
		id = req.GetPodSandboxId()
	case removePodSandboxMethod:
		req := &runtimeapi.RemovePodSandboxRequest{}
		if proto.Unmarshal(in, req) != nil {
			return "", false
		}
		id = req.GetPodSandboxId()
	}
	return id, id != ""
}
