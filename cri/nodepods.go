package cri

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/pss"
)

// verboseInfo is the part of containerd's verbose status info["info"] that
// armorshim reads: the CRI config the sandbox or container was created with.
type verboseInfo[T any] struct {
	Config *T `json:"config"`
}

// NodePods reads the pods that run on the node now from the runtime: ready
// sandboxes (in namespace, if not empty) with their verbose status, which
// in containerd holds the sandbox and container CRI configs as JSON under
// info["info"], and the users of images their containers leave the user
// to. Pods whose configs the runtime does not return are listed in skipped.
func NodePods(ctx context.Context, runtime, image grpc.ClientConnInterface, namespace string, c *pss.Config) (pods []*pss.Pod, skipped []string, err error) {
	rs := runtimeapi.NewRuntimeServiceClient(runtime)
	is := runtimeapi.NewImageServiceClient(image)
	filter := &runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
	if namespace != "" {
		filter.LabelSelector = map[string]string{"io.kubernetes.pod.namespace": namespace}
	}
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: filter})
	if err != nil {
		return nil, nil, fmt.Errorf("ListPodSandbox: %w", err)
	}
	users := map[string]*pss.ImageUser{}
	for _, sb := range list.GetItems() {
		name := sb.GetMetadata().GetNamespace() + "/" + sb.GetMetadata().GetName()
		st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.GetId(), Verbose: true})
		if err != nil {
			return nil, nil, fmt.Errorf("PodSandboxStatus %s: %w", name, err)
		}
		sbCfg, err := verboseConfig[runtimeapi.PodSandboxConfig](st.GetInfo())
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: sandbox: %v", name, err))
			continue
		}
		handler := st.GetStatus().GetRuntimeHandler()
		if handler == "" {
			handler = sb.GetRuntimeHandler()
		}
		ctrs, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sb.GetId()}})
		if err != nil {
			return nil, nil, fmt.Errorf("ListContainers %s: %w", name, err)
		}
		var ncs []pss.NodeContainer
		ok := true
		for _, ctr := range ctrs.GetContainers() {
			if ctr.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED && ctr.GetMetadata().GetAttempt() > 0 {
				continue // an earlier attempt of a restarted container
			}
			cs, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.GetId(), Verbose: true})
			if err != nil {
				return nil, nil, fmt.Errorf("ContainerStatus %s/%s: %w", name, ctr.GetMetadata().GetName(), err)
			}
			cc, err := verboseConfig[runtimeapi.ContainerConfig](cs.GetInfo())
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("%s: container %s: %v", name, ctr.GetMetadata().GetName(), err))
				ok = false
				break
			}
			nc := pss.NodeContainer{Config: cc}
			if pss.NeedsImageUser(cc, sbCfg) {
				ref := cc.GetImage().GetImage()
				u, seen := users[ref]
				if !seen {
					if r, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: cc.GetImage()}); err == nil {
						u = pss.ImageUserOf(r.GetImage())
					}
					users[ref] = u
				}
				nc.Image = u
			}
			ncs = append(ncs, nc)
		}
		if ok {
			pods = append(pods, pss.NodePod(sbCfg, handler, ncs, c))
		}
	}
	return pods, skipped, nil
}

func verboseConfig[T any](info map[string]string) (*T, error) {
	raw, ok := info["info"]
	if !ok {
		return nil, fmt.Errorf("the runtime's verbose status has no info")
	}
	var v verboseInfo[T]
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return nil, fmt.Errorf("verbose info: %w", err)
	}
	if v.Config == nil {
		return nil, fmt.Errorf("the runtime's verbose info has no config")
	}
	return v.Config, nil
}
