//go:build conformance

package conformance

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// tools are the binaries the suite drives, built from tools/go.mod.
type tools struct {
	h2spec, interopClient, interopServer string
	// h2specVersion and grpcVersion are the module versions they were
	// built from.
	h2specVersion, grpcVersion string
	// cached tells whether they came from the cache.
	cached bool
}

// The tool packages, as tools/go.mod names them.
const (
	h2specPkg        = "github.com/summerwind/h2spec/cmd/h2spec"
	interopClientPkg = "google.golang.org/grpc/interop/client"
	interopServerPkg = "google.golang.org/grpc/interop/server"
)

// goCmd is the go command: $GO (make passes its own), else go on PATH.
func goCmd() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// cacheRoot is where built tools are kept: $ARMORSHIM_CACHE, else the
// integration suite's cache, else the user's cache directory when that one
// cannot be created (no root).
func cacheRoot() (string, error) {
	if c := os.Getenv("ARMORSHIM_CACHE"); c != "" {
		return c, os.MkdirAll(c, 0o755)
	}
	c := "/var/cache/armorshim-integration"
	if err := os.MkdirAll(c, 0o755); err == nil {
		if f, err := os.CreateTemp(c, ".probe"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return c, nil
		}
	}
	u, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	c = filepath.Join(u, "armorshim")
	return c, os.MkdirAll(c, 0o755)
}

// moduleVersion returns the version tools/go.mod requires of module.
func moduleVersion(gomod []byte, module string) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == module {
			return strings.TrimSuffix(f[1], "+incompatible")
		}
	}
	return "unknown"
}

// prepareTools builds h2spec and the interop client and server into
// <cache>/conformance-h2spec-<v>-grpc-<v>-<go>-<hash of tools/go.mod and
// go.sum>, or takes them from there.
func prepareTools(t *testing.T) tools {
	t.Helper()
	gomod, err := os.ReadFile("tools/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile("tools/go.sum")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(gomod)
	h.Write(gosum)
	tl := tools{
		h2specVersion: moduleVersion(gomod, "github.com/summerwind/h2spec"),
		grpcVersion:   moduleVersion(gomod, "google.golang.org/grpc"),
	}
	root, err := cacheRoot()
	if err != nil {
		t.Fatalf("tool cache: %v", err)
	}
	key := fmt.Sprintf("conformance-h2spec-%s-grpc-%s-%s-%s", tl.h2specVersion, tl.grpcVersion,
		runtime.Version(), hex.EncodeToString(h.Sum(nil))[:12])
	dir := filepath.Join(root, key)
	tl.h2spec = filepath.Join(dir, "h2spec")
	tl.interopClient = filepath.Join(dir, "client")
	tl.interopServer = filepath.Join(dir, "server")
	if _, err := os.Stat(dir); err == nil {
		tl.cached = true
		t.Logf("tools: cached in %s", dir)
		return tl
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command(goCmd(), "build", "-trimpath", "-o", tmp+"/", h2specPkg, interopClientPkg, interopServerPkg)
	cmd.Dir = "tools"
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the tools (tools/go.mod): %v\n%s", err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("tools: built into %s in %s", dir, time.Since(start).Round(time.Second))
	return tl
}

// armorshimBinary returns $ARMORSHIM_BIN (make passes bin/armorshim), or
// builds armorshim from this checkout.
func armorshimBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("ARMORSHIM_BIN"); b != "" {
		return b
	}
	b := filepath.Join(t.TempDir(), "armorshim")
	cmd := exec.Command(goCmd(), "build", "-o", b, "./cmd/armorshim")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building armorshim: %v\n%s", err, out)
	}
	return b
}
