package host

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

// LabelNamespace is the node-feature-discovery label namespace armorshim
// writes. nfd-master allows it by default (it denies only kubernetes.io and
// its subdomains).
const LabelNamespace = "apparmor.armorshim.io"

// FeatureFileName is the file armorshim writes in NFD's features.d.
const FeatureFileName = "armorshim-apparmor"

// maxLabelName is the Kubernetes limit on a label name (after the prefix).
const maxLabelName = 63

// LabelName maps a profile name to a valid label name: characters outside
// [A-Za-z0-9._-] become "_", and the ends must be alphanumeric. A name that
// had to change or is too long gets a hash of the original at its end, so two
// profiles never share a label.
func LabelName(profile string) string {
	var b strings.Builder
	for _, r := range profile {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	alnum := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	if name != "" && name == profile && len(name) <= maxLabelName && alnum(name[0]) && alnum(name[len(name)-1]) {
		return name
	}
	sum := sha256.Sum256([]byte(profile))
	suffix := "-" + hex.EncodeToString(sum[:])[:10]
	name = strings.Trim(name, "._-")
	if max := maxLabelName - len(suffix); len(name) > max {
		name = strings.TrimRight(name[:max], "._-")
	}
	if name == "" {
		name = "p"
	}
	return name + suffix
}

// Features renders the NFD feature file for a snapshot: whether AppArmor is
// enabled, and one label per loaded profile with its mode as value.
func Features(snap *apparmor.Snapshot, expires time.Time) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by armorshim: the node's AppArmor state for node-feature-discovery.\n")
	fmt.Fprintf(&b, "# +expiry-time=%s\n", expires.UTC().Format(time.RFC3339))
	enabled := snap.Err == nil && snap.Enabled
	fmt.Fprintf(&b, "%s/enabled=%t\n", LabelNamespace, enabled)
	if !enabled {
		return []byte(b.String())
	}
	lines := make([]string, 0, len(snap.Profiles))
	for name, mode := range snap.Profiles {
		value := string(mode)
		if value == "" || LabelName(value) != value {
			value = "unknown"
		}
		lines = append(lines, fmt.Sprintf("%s/%s=%s\n", LabelNamespace, LabelName(name), value))
	}
	sort.Strings(lines)
	for _, l := range lines {
		b.WriteString(l)
	}
	return []byte(b.String())
}

// WriteFeatures writes data as dir/FeatureFileName atomically: a dot-file in
// the same directory (NFD ignores those), then a rename.
func WriteFeatures(dir string, data []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+FeatureFileName+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, FeatureFileName))
}
