package shim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

// GeneratedProfile is a profile generated from what pods learned.
type GeneratedProfile struct {
	Path string // where it was written: <learning.directory>/<name>/<name>
	Text string
	From apparmor.LearnedFrom
}

// GenerateProfile turns what pods learning name recorded under
// cfg.Learning.Directory into a profile, checks that apparmor_parser
// (cfg.Profiles.Parser) accepts it without loading it, and writes it next
// to the records: a staging place, never the profile directory armorshim
// enforces. Copying it there is the operator's decision.
func GenerateProfile(ctx context.Context, cfg *Config, name string) (*GeneratedProfile, error) {
	accesses, from, err := host.ReadLearned(cfg.Learning.Directory, name)
	if err != nil {
		return nil, err
	}
	if len(accesses) == 0 {
		return nil, fmt.Errorf("nothing learned for %q yet: its pods recorded no access (is denials.auditNetlink on?)", name)
	}
	g := &GeneratedProfile{Text: apparmor.GenerateProfile(name, accesses, from), From: from,
		Path: filepath.Join(cfg.Learning.Directory, name, name)}
	tmp := g.Path + ".tmp"
	if err := os.WriteFile(tmp, []byte(g.Text), 0o644); err != nil {
		return nil, err
	}
	parser := cfg.Profiles.Parser
	if parser == "" {
		parser = "apparmor_parser"
	}
	// --skip-kernel-load: parse and compile only.
	if out, err := exec.CommandContext(ctx, parser, "--skip-kernel-load", "--skip-cache", "--", tmp).CombinedOutput(); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("apparmor_parser refuses the generated profile: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, g.Path); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	return g, nil
}
