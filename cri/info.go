package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// ParseContainerInfo reads, from containerd's verbose ContainerStatus info,
// the container's pid and the config's fields that the AppArmor expectation
// depends on: metadata and the AppArmor and privileged settings. pid is 0
// and the config nil if the info has none. It reads the document only up
// to them (see parseInfo): what follows is not checked.
func ParseContainerInfo(info []byte) (pid int, cfg *runtimeapi.ContainerConfig, err error) {
	return parseInfo(info, true)
}

// parseInfo reads "pid" and, with withConfig, the config's fields that the
// AppArmor expectation depends on from containerd's verbose info (which
// containerd writes with encoding/json, so with the generated JSON names),
// stopping as soon as it has them: containerd writes the pid second and
// the config before the OCI spec, which makes up most of the document. pid
// is 0 if there is none. Only the values it decodes are checked; the
// others are skipped over. Decoding the whole ContainerConfig cost a third
// of an attestation.
func parseInfo(info []byte, withConfig bool) (pid int, cfg *runtimeapi.ContainerConfig, err error) {
	keys := []string{"pid", "config"}
	if !withConfig {
		keys = keys[:1]
	}
	var v [2][]byte
	if err := jsonFields(info, keys, v[:]); err != nil {
		return 0, nil, fmt.Errorf("container info: %w", err)
	}
	if v[0] != nil {
		if err := json.Unmarshal(v[0], &pid); err != nil {
			return 0, nil, fmt.Errorf("container info: pid: %w", err)
		}
	}
	if v[1] == nil || string(v[1]) == "null" {
		return pid, nil, nil
	}
	if cfg, err = configOf(v[1]); err != nil {
		return 0, nil, fmt.Errorf("container info: config: %w", err)
	}
	return pid, cfg, nil
}

// configOf decodes, of a ContainerConfig in JSON, the metadata, the labels
// (the kubelet's names of the pod) and the AppArmor and privileged
// settings.
func configOf(b []byte) (*runtimeapi.ContainerConfig, error) {
	var v [3][]byte
	if err := jsonFields(b, []string{"metadata", "labels", "linux"}, v[:]); err != nil {
		return nil, err
	}
	cfg := &runtimeapi.ContainerConfig{}
	if v[0] != nil {
		if err := json.Unmarshal(v[0], &cfg.Metadata); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
	}
	if v[1] != nil {
		if err := json.Unmarshal(v[1], &cfg.Labels); err != nil {
			return nil, fmt.Errorf("labels: %w", err)
		}
	}
	if v[2] == nil || string(v[2]) == "null" {
		return cfg, nil
	}
	var sc [1][]byte
	if err := jsonFields(v[2], []string{"security_context"}, sc[:]); err != nil {
		return nil, fmt.Errorf("linux: %w", err)
	}
	if sc[0] == nil || string(sc[0]) == "null" {
		return cfg, nil
	}
	var s struct {
		Privileged      bool                        `json:"privileged"`
		Apparmor        *runtimeapi.SecurityProfile `json:"apparmor"`
		ApparmorProfile string                      `json:"apparmor_profile"`
	}
	var f [3][]byte
	if err := jsonFields(sc[0], []string{"privileged", "apparmor", "apparmor_profile"}, f[:]); err != nil {
		return nil, fmt.Errorf("linux.security_context: %w", err)
	}
	for i, dst := range []any{&s.Privileged, &s.Apparmor, &s.ApparmorProfile} {
		if f[i] != nil {
			if err := json.Unmarshal(f[i], dst); err != nil {
				return nil, fmt.Errorf("linux.security_context: %w", err)
			}
		}
	}
	cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		Privileged: s.Privileged, Apparmor: s.Apparmor, ApparmorProfile: s.ApparmorProfile,
	}}
	return cfg, nil
}

var errTruncated = errors.New("unexpected end of JSON input")

// jsonFields sets vals[i] to the raw value of the top-level key keys[i] of
// the JSON object b (the first one, nil if none). It stops once it has them
// all, and of the other values only finds where they end.
func jsonFields(b []byte, keys []string, vals [][]byte) error {
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return errors.New("not a JSON object")
	}
	missing := len(keys)
	for i++; ; {
		i = skipSpace(b, i)
		if i == len(b) {
			return errTruncated
		}
		if b[i] == '}' {
			return nil
		}
		if b[i] != '"' {
			return fmt.Errorf("invalid character %q looking for a key", b[i])
		}
		end, err := skipString(b, i)
		if err != nil {
			return err
		}
		key := b[i+1 : end-1] // the keys looked for have no escapes
		i = skipSpace(b, end)
		if i == len(b) || b[i] != ':' {
			return errTruncated
		}
		i = skipSpace(b, i+1)
		end, err = skipValue(b, i)
		if err != nil {
			return err
		}
		for k := range keys {
			if vals[k] == nil && string(key) == keys[k] {
				vals[k] = b[i:end]
				if missing--; missing == 0 {
					return nil
				}
			}
		}
		i = skipSpace(b, end)
		if i == len(b) {
			return errTruncated
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return nil
		default:
			return fmt.Errorf("invalid character %q after a value", b[i])
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns where the JSON value starting at b[i] ends. It matches
// strings, brackets and braces, and does not check what is inside.
func skipValue(b []byte, i int) (int, error) {
	if i == len(b) {
		return 0, errTruncated
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end, err := skipString(b, i)
				if err != nil {
					return 0, err
				}
				i = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1, nil
				}
			}
		}
		return 0, errTruncated
	}
	// A number, true, false or null.
	start := i
	for i < len(b) && !isDelimiter(b[i]) {
		i++
	}
	if i == start {
		return 0, fmt.Errorf("invalid character %q looking for a value", b[i])
	}
	return i, nil
}

func isDelimiter(c byte) bool {
	switch c {
	case ',', '}', ']', ':', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// skipString returns where the JSON string starting at b[i] ends.
func skipString(b []byte, i int) (int, error) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1, nil
		}
	}
	return 0, errTruncated
}

// containerInfoJSON asks the runtime for a container's verbose status and
// returns its info["info"] (containerd's JSON), nil if the answer has none,
// reading nothing else of it: the status itself, its mounts, labels and
// annotations, are not decoded. From a held call's Response function (ctx)
// it asks on the relay's connection that answered the call (h2relay.Call),
// which spares the hand-offs to and from a gRPC client's goroutines;
// otherwise, or if that connection takes no new call, through conn.
func containerInfoJSON(ctx context.Context, conn grpc.ClientConnInterface, id string) ([]byte, error) {
	req := &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true}
	if b, err := proto.Marshal(req); err == nil {
		if resp, st, ok := h2relay.Call(ctx, runtimeapi.RuntimeService_ContainerStatus_FullMethodName, b); ok {
			if st.Code() != codes.OK {
				return nil, st.Err()
			}
			info, err := infoEntry(resp)
			if err != nil {
				return nil, fmt.Errorf("ContainerStatusResponse: %w", err)
			}
			return info, nil
		}
	}
	var info []byte
	err := conn.Invoke(ctx, runtimeapi.RuntimeService_ContainerStatus_FullMethodName, req, &info,
		grpc.ForceCodecV2(infoCodec{}))
	return info, err
}

// infoCodec encodes a request as protobuf and, of a ContainerStatusResponse,
// copies out only the "info" entry of its info map (field 2).
type infoCodec struct{}

func (infoCodec) Name() string { return "proto" }

func (infoCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (infoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	info, err := infoEntry(b)
	if err != nil {
		return fmt.Errorf("ContainerStatusResponse: %w", err)
	}
	if info != nil {
		info = append([]byte{}, info...) // data is the transport's
	}
	*v.(*[]byte) = info
	return nil
}

// infoEntry returns the value of the "info" key of a ContainerStatusResponse's
// info map, nil if there is none.
func infoEntry(b []byte) ([]byte, error) {
	var info []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if num != 2 || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return nil, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		entry, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		key, value, err := mapEntry(entry)
		if err != nil {
			return nil, err
		}
		if key == "info" {
			info = value // the last one wins, as in a decoded map
		}
	}
	return info, nil
}

// mapEntry reads a map<string, string> entry: key 1, value 2.
func mapEntry(b []byte) (key string, value []byte, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType || (num != 1 && num != 2) {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return "", nil, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		b = b[n:]
		if num == 1 {
			key = string(v)
		} else {
			value = v
		}
	}
	return key, value, nil
}
