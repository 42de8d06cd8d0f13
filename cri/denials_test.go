package cri_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/cri"
)

// cgroups is a fake procfs: pid -> container ID (missing: the process is gone).
type cgroups map[int]string

func (c cgroups) ContainerID(pid int) (string, error) {
	id, ok := c[pid]
	if !ok {
		return "", fmt.Errorf("no such process %d", pid)
	}
	return id, nil
}

// kmsgLine renders a /dev/kmsg record of an AppArmor denial, as the 6.1
// kernel writes it.
func kmsgLine(seq int, profile, op, name string, pid int, comm string) string {
	return fmt.Sprintf(`5,%d,58125716,-;audit: type=1400 audit(1764121000.713:%d): apparmor="DENIED" operation="%s" class="file" profile="%s" name="%s" pid=%d comm="%s" requested_mask="c" denied_mask="c" fsuid=0 ouid=0`+"\n",
		seq, seq, op, profile, name, pid, comm)
}

// denialBackend answers ContainerStatus from a table of running containers.
func denialBackend(t *testing.T, running map[string][3]string) *backend {
	b := startBackend(t)
	b.onUnary("/runtime.v1.RuntimeService/ContainerStatus", func(ctx context.Context, req any, _ grpc.UnaryHandler) (any, error) {
		id := req.(*runtimeapi.ContainerStatusRequest).ContainerId
		names, ok := running[id]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "container %q not found", id)
		}
		return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{
			Id: id, State: runtimeapi.ContainerState_CONTAINER_RUNNING,
			Metadata: &runtimeapi.ContainerMetadata{Name: names[2]},
			Labels: map[string]string{
				"io.kubernetes.pod.namespace": names[0], "io.kubernetes.pod.name": names[1], "io.kubernetes.container.name": names[2],
			},
		}}, nil
	})
	return b
}

func denialCount(t *testing.T, reg *prometheus.Registry, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "armorshim_apparmor_denials_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if got["namespace"] == labels[0] && got["pod"] == labels[1] && got["container"] == labels[2] && got["profile"] == labels[3] && got["operation"] == labels[4] {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestDenialsAttributedToPods(t *testing.T) {
	const id = "3f4a5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	b := denialBackend(t, map[string][3]string{
		id:       {"default", "hello-apparmor", "hello"},
		"nginx1": {"web", "nginx-0", "nginx"},
	})
	reg := prometheus.NewRegistry()
	d := cri.NewDenials(dial(t, b.sock), cgroups{4242: id}, reg)
	d.Confined("nginx1", "k8s-nginx")

	log := kmsgLine(1, denyWrite, "mknod", "/tmp/test", 4242, "touch") + // process alive: cgroup
		"6,2,0,-;eth0: link up\n" +
		kmsgLine(3, "k8s-nginx", "open", "/etc/shadow", 999, "cat") + // gone, one container runs k8s-nginx
		kmsgLine(4, "k8s-apparmor-example-other", "open", "/x", 998, "sh") // gone, nobody known
	if err := d.Run(context.Background(), strings.NewReader(log)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"default", "hello-apparmor", "hello", denyWrite, "mknod"}, 1},
		{[]string{"web", "nginx-0", "nginx", "k8s-nginx", "open"}, 1},
		{[]string{"unknown", "unknown", "unknown", "k8s-apparmor-example-other", "open"}, 1},
	} {
		if got := denialCount(t, reg, c.labels...); got != c.want {
			t.Errorf("denials%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if n := seriesCount(t, reg); n != 3 {
		t.Errorf("%d series, want 3", n)
	}
}

func TestDenialsProfileFallbackNeedsOneRunningContainer(t *testing.T) {
	b := denialBackend(t, map[string][3]string{
		"a": {"default", "pod-a", "c"},
		"b": {"default", "pod-b", "c"},
	})
	reg := prometheus.NewRegistry()
	d := cri.NewDenials(dial(t, b.sock), cgroups{}, reg)
	d.Confined("a", denyWrite)
	d.Confined("b", denyWrite)
	d.Confined("gone", denyWrite) // not running any more: pruned
	d.Run(context.Background(), strings.NewReader(kmsgLine(1, denyWrite, "mknod", "/tmp/test", 1, "touch")))
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "mknod"); got != 1 {
		t.Errorf("two containers share the profile: the denial must stay unattributed, got %v", got)
	}
}

func TestDenialsBoundedCardinality(t *testing.T) {
	running := map[string][3]string{}
	procs := cgroups{}
	var log strings.Builder
	for i := 0; i < 1100; i++ {
		id := fmt.Sprintf("c%04d", i)
		running[id] = [3]string{"ns", fmt.Sprintf("pod-%d", i), "c"}
		procs[10000+i] = id
		log.WriteString(kmsgLine(i, denyWrite, "mknod", "/tmp/test", 10000+i, "touch"))
	}
	b := denialBackend(t, running)
	reg := prometheus.NewRegistry()
	d := cri.NewDenials(dial(t, b.sock), procs, reg)
	if err := d.Run(context.Background(), strings.NewReader(log.String())); err != nil {
		t.Fatal(err)
	}
	if n := seriesCount(t, reg); n > 1001 {
		t.Errorf("%d series: the label sets are not bounded", n)
	}
	if got := denialCount(t, reg, "other", "other", "other", denyWrite, "mknod"); got != 100 {
		t.Errorf("denials past the bound = %v, want 100 folded into other", got)
	}
}

func seriesCount(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "armorshim_apparmor_denials_total" {
			return len(mf.GetMetric())
		}
	}
	return 0
}
