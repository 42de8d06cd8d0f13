package h2relay_test

import (
	"context"
	"testing"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// BenchmarkUnary times a tiny unary call direct to a gRPC-Go server and
// through the relay, all in one process (make bench measures the real
// thing, across processes); allocs/op of "relay" minus "direct" are the
// relay's own.
func BenchmarkUnary(b *testing.B) {
	srv := startServer(b, echo)
	_, _, sock := relay(b, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	for _, c := range []struct{ name, sock string }{{"direct", srv.sock}, {"relay", sock}} {
		b.Run(c.name, func(b *testing.B) {
			conn := dial(b, c.sock)
			in, out := &raw{[]byte("version")}, new(raw)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := conn.Invoke(ctx, "/t.S/Version", in, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
