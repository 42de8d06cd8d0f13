package main

import (
	"net"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The abuse client speaks HTTP/2 well enough for a gRPC-Go server to serve
// what it sends: a large header block answered, a call held half sent, a
// stalled answer, calls opened and left (small versions of P7's cases).
func TestAbuseClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "rt.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessageSize), grpc.MaxSendMsgSize(maxMessageSize))
	runtimeapi.RegisterRuntimeServiceServer(srv, newFakeRuntime(200))
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	a := &attack{sock: sock}
	defer a.close()
	if err := a.headerBlocks(2, manyFields(64<<10, 4<<10)); err != nil {
		t.Errorf("header blocks: %v", err)
	}
	if err := a.heldCreates(2, 1<<20, 512<<10); err != nil {
		t.Errorf("held creates: %v", err)
	}
	if err := a.stall(3); err != nil {
		t.Errorf("stall: %v", err)
	}
	if err := a.openCalls(150); err != nil {
		t.Errorf("open calls: %v", err)
	}
	for _, h := range a.conns {
		if h.isClosed() {
			t.Errorf("the server closed a connection of a legal abuse")
		}
	}
	if f := manyFields(10<<10, 4<<10); len(f) != 3 || len(f[0].Name)+len(f[0].Value) != 4<<10 {
		t.Errorf("manyFields(10 KiB, 4 KiB): %d fields", len(f))
	}
}
