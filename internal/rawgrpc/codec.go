// Package rawgrpc is a gRPC codec that hands messages over undecoded, for
// the tests' backends and clients that handle calls as bytes.
package rawgrpc

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame is one message as it was on the wire, undecoded. Marshalling a Frame
// hands its buffers to gRPC, so a Frame is sent at most once.
type Frame struct {
	data mem.BufferSlice
}

// Bytes returns the message as one byte slice (copying only if it is split).
func (f *Frame) Bytes() []byte {
	if len(f.data) == 1 {
		return f.data[0].ReadOnlyData()
	}
	return f.data.Materialize()
}

// Free releases the buffers of a Frame that will not be sent.
func (f *Frame) Free() {
	f.data.Free()
	f.data = nil
}

// FrameOf wraps encoded bytes in a Frame.
func FrameOf(b []byte) *Frame {
	return &Frame{data: mem.BufferSlice{mem.SliceBuffer(b)}}
}

// Codec passes Frames through untouched and encodes anything else as
// protobuf. Use it on a server (grpc.ForceServerCodecV2) or a client
// (grpc.ForceCodecV2): the wire content type stays application/grpc.
type Codec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

func (Codec) Name() string { return proto.Name }

func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		out := f.data
		f.data = nil
		return out, nil
	}
	return protoCodec.Marshal(v)
}

func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		if f.data != nil {
			return fmt.Errorf("rawgrpc: frame reused")
		}
		data.Ref()
		f.data = data
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}
