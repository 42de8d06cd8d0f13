// Command installer builds the armorshim installer's container image
// (deploy/installer.yaml runs it) as an OCI image archive, with no
// registry and no container tooling: one layer holding the static
// armorshim-installer (the entrypoint) and the payload it installs on each
// node (the static armorshim, the systemd unit, the default configuration
// and the kubelet drop-ins). The archive is deterministic for the same
// inputs. Import it with `ctr -n k8s.io images import`, or copy it to a
// registry (`skopeo copy oci-archive:FILE docker://REGISTRY/...`).
//
//	go run ./deploy/installer --version V --armorshim bin/armorshim-static \
//	    --installer bin/armorshim-installer --systemd systemd --out FILE
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Repository is the name the image is imported under, with the version as
// its tag: local, nothing is pulled by it.
const Repository = "localhost/armorshim/installer"

// systemdFiles are the files of the repository's systemd directory the
// payload carries.
var systemdFiles = []string{"armorshim.service", "config.yaml", "kubelet-dropins.sh",
	"kubelet.conf.d/90-armorshim.conf", "kubelet.service.d/90-armorshim.conf"}

func main() {
	version := flag.String("version", "", "the version (the image's tag and label)")
	armorshim := flag.String("armorshim", "bin/armorshim-static", "the static armorshim binary")
	installer := flag.String("installer", "bin/armorshim-installer", "the static armorshim-installer binary")
	systemd := flag.String("systemd", "systemd", "the repository's systemd directory")
	arch := flag.String("arch", runtime.GOARCH, "the binaries' architecture")
	out := flag.String("out", "", "the OCI archive to write")
	flag.Parse()
	if *version == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "installer: --version and --out are required")
		os.Exit(2)
	}
	files, err := Files(*armorshim, *installer, *systemd)
	if err == nil {
		var archive []byte
		if archive, err = Build(files, *version, *arch); err == nil {
			err = os.WriteFile(*out, archive, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "installer:", err)
		os.Exit(1)
	}
	fmt.Printf("%s (%s:%s)\n", *out, Repository, Tag(*version))
}

// File is a file of the image.
type File struct {
	Data []byte
	Mode int64
}

// Files reads the image's files: path in the image to content.
func Files(armorshim, installer, systemd string) (map[string]File, error) {
	files := map[string]File{}
	add := func(dst, src string, mode int64) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		files[dst] = File{b, mode}
		return nil
	}
	for _, f := range []struct {
		dst, src string
		mode     int64
	}{
		{"armorshim-installer", installer, 0o755},
		{"payload/armorshim-installer", installer, 0o755},
		{"payload/bin/armorshim", armorshim, 0o755},
	} {
		if err := add(f.dst, f.src, f.mode); err != nil {
			return nil, err
		}
	}
	for _, f := range systemdFiles {
		if err := add("payload/systemd/"+f, filepath.Join(systemd, f), 0o644); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// Tag is the image tag for a version.
func Tag(version string) string {
	b := []byte(version)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// Build returns the OCI image archive (image-spec v1.1 layout, as a tar).
func Build(files map[string]File, version, arch string) ([]byte, error) {
	layer, diffID, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	created := time.Unix(0, 0).UTC().Format(time.RFC3339)
	config, err := json.Marshal(map[string]any{
		"created": created, "architecture": arch, "os": "linux",
		"config": map[string]any{
			"Entrypoint": []string{"/armorshim-installer"},
			"Cmd":        []string{"run"},
			"Labels": map[string]string{
				"org.opencontainers.image.title":   "armorshim-installer",
				"org.opencontainers.image.version": version,
			},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created": created, "created_by": "go run ./deploy/installer"}},
	})
	if err != nil {
		return nil, err
	}
	blobs := map[string][]byte{}
	desc := func(mediaType string, b []byte) map[string]any {
		d := digest(b)
		blobs[d] = b
		return map[string]any{"mediaType": mediaType, "digest": d, "size": len(b)}
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)},
	})
	if err != nil {
		return nil, err
	}
	md := desc("application/vnd.oci.image.manifest.v1+json", manifest)
	md["platform"] = map[string]string{"architecture": arch, "os": "linux"}
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          Repository + ":" + Tag(version),
		"org.opencontainers.image.ref.name": Tag(version),
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})
	if err != nil {
		return nil, err
	}
	entries := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	for d, b := range blobs {
		entries["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = b
	}
	return tarOf(entries, func(string) int64 { return 0o644 })
}

// layerTar is the gzipped layer and its uncompressed digest (the diff ID).
func layerTar(files map[string]File) (gz []byte, diffID string, err error) {
	data := map[string][]byte{}
	for name, f := range files {
		data[name] = f.Data
	}
	raw, err := tarOf(data, func(name string) int64 { return files[name].Mode })
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if _, err := zw.Write(raw); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return b.Bytes(), digest(raw), nil
}

// tarOf writes files (and their parent directories) in name order, owned by
// root, with a zero time: the same files give the same bytes.
func tarOf(files map[string][]byte, mode func(string) int64) ([]byte, error) {
	names := make([]string, 0, len(files))
	dirs := map[string]bool{}
	for name := range files {
		names = append(names, name)
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			dirs[d+"/"] = true
		}
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, name := range names {
		h := &tar.Header{Name: name, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if strings.HasSuffix(name, "/") {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, mode(name), int64(len(files[name]))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
