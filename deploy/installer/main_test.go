package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// untar reads a tar archive into name -> (content, mode).
func untar(t *testing.T, b []byte) map[string]File {
	t.Helper()
	out := map[string]File{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out[h.Name] = File{data, h.Mode}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
	}
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// blob returns the blob a descriptor names, checking its digest and size.
func blob(t *testing.T, entries map[string]File, d descriptor) []byte {
	t.Helper()
	f, ok := entries["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("no blob %s", d.Digest)
	}
	if digest(f.Data) != d.Digest || len(f.Data) != d.Size {
		t.Fatalf("blob %s: digest %s, size %d (want %d)", d.Digest, digest(f.Data), len(f.Data), d.Size)
	}
	return f.Data
}

// The archive is an OCI image layout whose descriptors hold, and whose
// layer carries the entrypoint and the payload the installer installs.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "armorshim"), []byte("armorshim binary"), 0o755)
	os.WriteFile(filepath.Join(dir, "installer"), []byte("installer binary"), 0o755)
	files, err := Files(filepath.Join(dir, "armorshim"), filepath.Join(dir, "installer"), "../../systemd")
	if err != nil {
		t.Fatal(err)
	}
	archive, err := Build(files, "v1.2+3", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Build(files, "v1.2+3", "amd64")
	if !bytes.Equal(archive, again) {
		t.Error("two builds of the same files differ")
	}
	entries := untar(t, archive)
	if string(entries["oci-layout"].Data) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %q", entries["oci-layout"].Data)
	}
	var index struct {
		SchemaVersion int          `json:"schemaVersion"`
		Manifests     []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(entries["index.json"].Data, &index); err != nil || index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s (%v)", entries["index.json"].Data, err)
	}
	md := index.Manifests[0]
	if md.Annotations["io.containerd.image.name"] != Repository+":v1.2-3" || md.Annotations["org.opencontainers.image.ref.name"] != "v1.2-3" {
		t.Errorf("the image's names: %v", md.Annotations)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(t, entries, md), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint []string `json:"Entrypoint"`
			Cmd        []string `json:"Cmd"`
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(t, entries, manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(t, entries, manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest(raw) {
		t.Errorf("diff_ids %v, the layer's digest %s", config.RootFS.DiffIDs, digest(raw))
	}
	if config.Architecture != "amd64" || config.OS != "linux" || strings.Join(config.Config.Entrypoint, " ") != "/armorshim-installer" {
		t.Errorf("config: %+v", config)
	}
	layer := untar(t, raw)
	for name, want := range map[string]string{
		"armorshim-installer":         "installer binary",
		"payload/armorshim-installer": "installer binary",
		"payload/bin/armorshim":       "armorshim binary",
	} {
		if f := layer[name]; string(f.Data) != want || f.Mode != 0o755 {
			t.Errorf("%s: %q mode %o", name, f.Data, f.Mode)
		}
	}
	for _, f := range systemdFiles {
		src, _ := os.ReadFile(filepath.Join("../../systemd", f))
		if got := layer["payload/systemd/"+f]; !bytes.Equal(got.Data, src) || len(src) == 0 {
			t.Errorf("payload/systemd/%s differs from the repository's", f)
		}
	}
	if _, ok := layer["payload/systemd/"]; !ok {
		t.Error("the layer has no directory entries")
	}
}
