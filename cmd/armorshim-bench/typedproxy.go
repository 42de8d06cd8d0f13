package main

import (
	"context"
	"flag"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// typedProxy is the comparison point: a CRI proxy built the way the existing
// ones are (cri-resource-manager, criproxy, koordinator's runtime-proxy):
// generated cri-api servers in front of generated clients, so every message
// is decoded into Go structs and encoded again, both ways. It implements the
// calls the benchmark makes; the others answer Unimplemented, which is the
// typed design's known limitation, not something measured here.
type typedProxy struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	rt runtimeapi.RuntimeServiceClient
	im runtimeapi.ImageServiceClient
}

// out forwards the caller's metadata, as a careful typed proxy does.
func out(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	return metadata.NewOutgoingContext(ctx, md)
}

func (p *typedProxy) Version(ctx context.Context, r *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return p.rt.Version(out(ctx), r)
}

func (p *typedProxy) Status(ctx context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return p.rt.Status(out(ctx), r)
}

func (p *typedProxy) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return p.rt.ListContainers(out(ctx), r)
}

func (p *typedProxy) ContainerStatus(ctx context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	return p.rt.ContainerStatus(out(ctx), r)
}

func (p *typedProxy) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return p.rt.ListPodSandbox(out(ctx), r)
}

func (p *typedProxy) PodSandboxStatus(ctx context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	return p.rt.PodSandboxStatus(out(ctx), r)
}

func (p *typedProxy) ContainerStats(ctx context.Context, r *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	return p.rt.ContainerStats(out(ctx), r)
}

func (p *typedProxy) ListContainerStats(ctx context.Context, r *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	return p.rt.ListContainerStats(out(ctx), r)
}

func (p *typedProxy) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	return p.rt.CreateContainer(out(ctx), r)
}

func (p *typedProxy) ImageFsInfo(ctx context.Context, r *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return p.im.ImageFsInfo(out(ctx), r)
}

// runTypedProxy is the typed-proxy mode: serve on --listen, forwarding to
// --runtime-endpoint over one long-lived connection, until SIGTERM.
func runTypedProxy(args []string) error {
	fs := flag.NewFlagSet("typed-proxy", flag.ContinueOnError)
	listen := fs.String("listen", "", "unix socket path to serve on")
	backend := fs.String("runtime-endpoint", "", "unix socket path of the runtime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+*backend,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)))
	if err != nil {
		return err
	}
	defer conn.Close()
	p := &typedProxy{rt: runtimeapi.NewRuntimeServiceClient(conn), im: runtimeapi.NewImageServiceClient(conn)}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessageSize), grpc.MaxSendMsgSize(maxMessageSize))
	runtimeapi.RegisterRuntimeServiceServer(srv, p)
	runtimeapi.RegisterImageServiceServer(srv, p)
	return serveUntilSignal(srv, *listen)
}
