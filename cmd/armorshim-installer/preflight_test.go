package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// node makes a host root that passes every check; break undoes one part.
func node(t *testing.T, brk string) string {
	t.Helper()
	root := t.TempDir()
	if brk != "systemd" {
		os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755)
	}
	aa := "Y\n"
	if brk == "apparmor" {
		aa = "N\n"
	}
	os.MkdirAll(filepath.Join(root, "sys/module/apparmor/parameters"), 0o755)
	os.WriteFile(filepath.Join(root, "sys/module/apparmor/parameters/enabled"), []byte(aa), 0o644)
	if brk != "containerd" {
		os.MkdirAll(filepath.Join(root, "run/containerd"), 0o755)
		// A real socket: a plain file is not containerd serving.
		l, err := net.Listen("unix", filepath.Join(root, "run/containerd/containerd.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
	if brk == "package" {
		os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
		os.WriteFile(filepath.Join(root, "usr/bin/armorshim"), nil, 0o755)
	}
	return root
}

func TestPreflight(t *testing.T) {
	kubeadm := func() (string, error) { return kubeadmUnit, nil }
	for _, tc := range []struct {
		brk, want string
		cat       func() (string, error)
	}{
		{"", "", kubeadm},
		{"systemd", blockedNoSystemd, kubeadm},
		{"apparmor", blockedNoAppArmor, kubeadm},
		{"containerd", blockedNoContainerd, kubeadm},
		{"package", blockedInstalledOther, kubeadm},
		{"", blockedNoKubeletUnit, func() (string, error) { return "", errors.New("Unit kubelet.service could not be found.") }},
		{"", blockedKubeletLayout, func() (string, error) {
			return "[Service]\nExecStart=/usr/local/bin/kubelet --config=/etc/kubelet.yaml --kubeconfig=/etc/kubelet.kubeconfig\n", nil
		}},
	} {
		root := node(t, tc.brk)
		before := tree(t, root)
		b := preflight(root, "/run/containerd/containerd.sock", tc.cat)
		got := ""
		if b != nil {
			got = b.reason
		}
		if got != tc.want {
			t.Errorf("node without %q: blocked %q (%v), want %q", tc.brk, got, b, tc.want)
		}
		if after := tree(t, root); after != before {
			t.Errorf("preflight changed the node:\n%s\nwas\n%s", after, before)
		}
	}
}

// tree lists the files below root with their sizes.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			info, _ := d.Info()
			b.WriteString(p + " " + info.Mode().String() + "\n")
		}
		return nil
	})
	return b.String()
}

func TestKubeletLayout(t *testing.T) {
	for _, tc := range []struct {
		unit          string
		defaultConfig bool
		ok            bool
	}{
		{kubeadmUnit, false, true},
		// kubeadm's, once installed: our drop-in's comments name --config-dir.
		{kubeadmUnit + "\n# /etc/systemd/system/kubelet.service.d/90-armorshim.conf\n# extends it with --config-dir\n[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d\"\n", false, true},
		// kubeadm's layout without KUBELET_CONFIG_ARGS: the default file must exist.
		{"[Service]\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS\n", true, true},
		{"[Service]\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS\n", false, false},
		{"[Service]\nExecStart=/usr/bin/kubelet ${KUBELET_CONFIG_ARGS}\n", true, true},
		// A --config-dir in KUBELET_CONFIG_ARGS: the drop-in goes into it.
		{"[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/k.yaml --config-dir=/etc/kubelet.d\"\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS\n", false, true},
		// Elsewhere the drop-in script would not see it, and the kubelet
		// would not read the drop-in.
		{"[Service]\nExecStart=/usr/bin/kubelet --config-dir=/etc/kubelet.d\n", false, false},
		{"[Service]\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS --config-dir=/etc/kubelet.d\n", true, false},
		{"[Service]\nEnvironment=\"KUBELET_EXTRA_ARGS=--config-dir=/x\"\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS $KUBELET_EXTRA_ARGS\n", true, false},
		{"[Service]\nExecStart=/usr/bin/kubelet --config=/etc/kubelet.yaml\n", true, false},
		// The last ExecStart counts.
		{"[Service]\nExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS\n[Service]\nExecStart=\nExecStart=/opt/kubelet --config=/k.yaml\n", true, false},
		{"[Service]\nType=simple\n", true, false},
	} {
		why := kubeletLayout(tc.unit, tc.defaultConfig)
		if (why == "") != tc.ok {
			t.Errorf("layout of\n%s(default config %v): %q, want ok=%v", tc.unit, tc.defaultConfig, why, tc.ok)
		}
	}
}

func TestLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"v0.4.0":                "v0.4.0",
		"9ed68d5-dirty":         "9ed68d5-dirty",
		"v1+build/3":            "v1-build-3",
		"-x-":                   "x",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
	} {
		if got := labelValue(in); got != want {
			t.Errorf("labelValue(%q) = %q, want %q", in, got, want)
		}
	}
}

// The API calls, against a TLS server standing in for the API server.
func TestKube(t *testing.T) {
	var patch map[string]any
	var path, ctype, auth string
	ds := `{"metadata":{"name":"armorshim-installer"}}`
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		switch {
		case r.Method == http.MethodPatch && r.URL.Path == "/api/v1/nodes/node-1":
			path, ctype = r.URL.Path, r.Header.Get("Content-Type")
			b, _ := io.ReadAll(r.Body)
			json.Unmarshal(b, &patch)
			w.Write([]byte(`{}`))
		case r.Method == http.MethodGet && r.URL.Path == "/apis/apps/v1/namespaces/kube-system/daemonsets/armorshim-installer":
			if ds == "" {
				http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
				return
			}
			w.Write([]byte(ds))
		default:
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("sekret\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	u, _ := url.Parse(srv.URL)
	t.Setenv("KUBERNETES_SERVICE_HOST", u.Hostname())
	t.Setenv("KUBERNETES_SERVICE_PORT", u.Port())
	k, err := inCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := k.label(ctx, "node-1", map[string]*string{labelInstalled: strp("v1"), labelBlocked: nil}); err != nil {
		t.Fatal(err)
	}
	labels := patch["metadata"].(map[string]any)["labels"].(map[string]any)
	if path != "/api/v1/nodes/node-1" || ctype != "application/merge-patch+json" || auth != "Bearer sekret" ||
		labels[labelInstalled] != "v1" || labels[labelBlocked] != nil || len(labels) != 2 {
		t.Errorf("PATCH %s (%s, %s): %v", path, ctype, auth, patch)
	}
	if err := k.label(ctx, "node-2", nil); err == nil {
		t.Error("labelling a node the server refuses succeeded")
	}
	for _, tc := range []struct {
		ds    string
		going bool
	}{
		{`{"metadata":{"name":"armorshim-installer"}}`, false},
		{`{"metadata":{"name":"armorshim-installer","deletionTimestamp":"2026-12-05T10:00:00Z"}}`, true},
		{"", true},
	} {
		ds = tc.ds
		going, err := k.daemonSetGoing(ctx, "kube-system", "armorshim-installer")
		if err != nil || going != tc.going {
			t.Errorf("DaemonSet %q: going %v, %v; want %v", tc.ds, going, err, tc.going)
		}
	}
	if _, err := k.daemonSetGoing(ctx, "other", "armorshim-installer"); err == nil {
		t.Error("an API error was taken for an answer")
	}
	// No certificate in ca.crt: no client.
	os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("not a certificate"), 0o644)
	if _, err := inCluster(dir); err == nil {
		t.Error("a client was made without a CA")
	}
}

// Host commands are found in the host's file system, not the image's.
func TestHostLookPath(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/bin/systemctl"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/local/bin/systemctl"), []byte("not executable"), 0o644)
	if p, err := hostLookPath(root, "systemctl"); err != nil || p != "/usr/bin/systemctl" {
		t.Errorf("systemctl: %q, %v", p, err)
	}
	if _, err := hostLookPath(root, "systemd-run"); err == nil {
		t.Error("found a command the host does not have")
	}
	pd := &pod{hostRoot: root}
	if cmd := pd.hostCommand("systemctl", "cat", "kubelet.service"); cmd.Path != "/usr/bin/systemctl" || cmd.Err != nil ||
		cmd.SysProcAttr.Chroot != root {
		t.Errorf("hostCommand: path %q, err %v, chroot %q", cmd.Path, cmd.Err, cmd.SysProcAttr.Chroot)
	}
}
