// Command crirecord is the integration suite's CRI recorder: a transparent
// gRPC proxy that relays every call from its socket to an upstream CRI
// socket and writes the RunPodSandbox, CreateContainer and ImageStatus
// calls it relayed (request, answer, status) as JSON files. The suite puts
// it between a real kubelet and armorshim to keep what the kubelet sent.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/internal/rawgrpc"
)

const maxMsg = 16 << 20 // the kubelet's limit

// Record is one recorded call.
type Record struct {
	Method   string          `json:"method"`
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response,omitempty"`
	Code     string          `json:"code"`
	Message  string          `json:"message,omitempty"`
}

type recorder struct {
	upstream *grpc.ClientConn
	dir      string
}

func main() {
	listen := flag.String("listen", "", "unix socket path to serve on")
	upstream := flag.String("upstream", "", "unix socket path of the CRI runtime to relay to")
	dir := flag.String("dir", "", "directory for the recorded calls")
	flag.Parse()
	if *listen == "" || *upstream == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: crirecord --listen PATH --upstream PATH --dir DIR")
		os.Exit(2)
	}
	if err := run(*listen, *upstream, *dir); err != nil {
		klog.ErrorS(err, "crirecord")
		os.Exit(1)
	}
}

func run(listen, upstream, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+upstream,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawgrpc.Codec{}),
			grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
	if err != nil {
		return err
	}
	r := &recorder{upstream: conn, dir: dir}
	_ = os.Remove(listen)
	l, err := net.Listen("unix", listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(r.relay), grpc.ForceServerCodecV2(rawgrpc.Codec{}),
		grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	return srv.Serve(l)
}

// recorded are the calls kept, with the request and answer types.
var recorded = map[string]func() (req, resp proto.Message){
	"/runtime.v1.RuntimeService/RunPodSandbox": func() (proto.Message, proto.Message) {
		return &runtimeapi.RunPodSandboxRequest{}, &runtimeapi.RunPodSandboxResponse{}
	},
	"/runtime.v1.RuntimeService/CreateContainer": func() (proto.Message, proto.Message) {
		return &runtimeapi.CreateContainerRequest{}, &runtimeapi.CreateContainerResponse{}
	},
	"/runtime.v1.ImageService/ImageStatus": func() (proto.Message, proto.Message) {
		return &runtimeapi.ImageStatusRequest{}, &runtimeapi.ImageStatusResponse{}
	},
}

// outgoing copies the caller's metadata without the transport's own keys.
func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" || k == "user-agent" || k == "te" {
			continue
		}
		out[k] = v
	}
	return metadata.NewOutgoingContext(ctx, out)
}

func (r *recorder) relay(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	ctx := outgoing(ss.Context())
	cs, err := r.upstream.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	var reqs [][]byte
	keep := recorded[method] != nil
	errc := make(chan error, 1)
	go func() {
		for {
			f := &rawgrpc.Frame{}
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					errc <- cs.CloseSend()
				} else {
					errc <- err
				}
				return
			}
			if keep {
				reqs = append(reqs, append([]byte(nil), f.Bytes()...))
			}
			if err := cs.SendMsg(f); err != nil {
				errc <- nil // the answer's status says why
				return
			}
		}
	}()
	var resps [][]byte
	headerSent := false
	for {
		f := &rawgrpc.Frame{}
		err := cs.RecvMsg(f)
		if !headerSent {
			if h, herr := cs.Header(); herr == nil {
				_ = ss.SendHeader(h)
			}
			headerSent = true
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if keep {
				<-errc
				r.write(method, reqs, resps, err)
			}
			return err
		}
		if keep {
			resps = append(resps, append([]byte(nil), f.Bytes()...))
		}
		if err := ss.SendMsg(f); err != nil {
			return err
		}
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// write keeps the first call of each kind per pod, container and attempt
// (per image for ImageStatus): the kubelet's retries repeat it.
func (r *recorder) write(method string, reqs, resps [][]byte, callErr error) {
	if len(reqs) != 1 {
		return
	}
	req, resp := recorded[method]()
	if err := proto.Unmarshal(reqs[0], req); err != nil {
		klog.ErrorS(err, "Cannot decode a request", "method", method)
		return
	}
	st := status.Convert(callErr)
	rec := Record{Method: method, Code: st.Code().String(), Message: st.Message()}
	opts := protojson.MarshalOptions{Multiline: true, Indent: "  "}
	rec.Request, _ = opts.Marshal(req)
	if len(resps) == 1 && proto.Unmarshal(resps[0], resp) == nil {
		rec.Response, _ = opts.Marshal(resp)
	}
	var name string
	switch q := req.(type) {
	case *runtimeapi.RunPodSandboxRequest:
		md := q.GetConfig().GetMetadata()
		name = fmt.Sprintf("%s_%s_sandbox", md.GetNamespace(), md.GetName())
	case *runtimeapi.CreateContainerRequest:
		md := q.GetSandboxConfig().GetMetadata()
		name = fmt.Sprintf("%s_%s_%s_%d", md.GetNamespace(), md.GetName(), q.GetConfig().GetMetadata().GetName(), q.GetConfig().GetMetadata().GetAttempt())
	case *runtimeapi.ImageStatusRequest:
		if st.Code() != 0 || rec.Response == nil {
			return
		}
		name = "image_" + q.GetImage().GetImage()
	}
	path := filepath.Join(r.dir, unsafeName.ReplaceAllString(name, "-")+".json")
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return // kept already
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		klog.ErrorS(err, "Cannot write a record", "path", path)
	}
}
