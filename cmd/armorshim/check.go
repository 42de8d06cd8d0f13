package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
	"github.com/armorshim/armorshim/shim"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

var defaultConfigPath = "/etc/armorshim/config.yaml"

// checkReport is what `armorshim check` prints, as text or JSON.
type checkReport struct {
	AppArmor struct {
		Enabled bool   `json:"enabled"`
		Detail  string `json:"detail,omitempty"`
		Error   string `json:"error,omitempty"`
	} `json:"apparmor"`
	Profiles         []profileState `json:"profiles"`
	Policy           policyReport   `json:"policy"`
	ProfileDirectory *dirReport     `json:"profileDirectory,omitempty"`
	Denials          denialsReport  `json:"denials"`
	Wanted           []wantState    `json:"wanted"`
	Missing          []string       `json:"missing"`
	OK               bool           `json:"ok"`
}

// denialsReport says whether armorshim can see AppArmor denials.
type denialsReport struct {
	Visible bool   `json:"visible"`
	Log     string `json:"log,omitempty"`
	Reason  string `json:"reason"`
}

type profileState struct {
	Name string `json:"name"`
	Mode string `json:"mode"`
}

type policyReport struct {
	Config          string   `json:"config,omitempty"`
	Enabled         bool     `json:"enabled"`
	DefaultProfile  string   `json:"defaultProfile,omitempty"`
	AllowedProfiles []string `json:"allowedProfiles,omitempty"`
	RequireEnforce  bool     `json:"requireEnforce"`
	// Modes is each rule's mode in words: enforce, warn, audit.
	Modes map[string][]string `json:"modes"`
}

type dirReport struct {
	Path  string     `json:"path"`
	Error string     `json:"error,omitempty"`
	Files []dirEntry `json:"files,omitempty"`
	// StatusFile is where the serving armorshim reports its loads, and
	// StatusError why it could not be read.
	StatusFile  string    `json:"statusFile,omitempty"`
	StatusError string    `json:"statusError,omitempty"`
	StatusSince time.Time `json:"statusSince,omitzero"`
	// Blocked says why the serving armorshim cannot load anything.
	Blocked string `json:"blocked,omitempty"`

	read bool // the directory could be listed
}

type dirEntry struct {
	File     string   `json:"file"`
	Profiles []string `json:"profiles"`
	// Refused says why the file is not trusted: armorshim does not load it.
	Refused string `json:"refused,omitempty"`
	// Load is the serving armorshim's last load of the file: loaded or
	// failed, with the parser's message, the failures in a row and the
	// next try.
	Load     string    `json:"load,omitempty"`
	Error    string    `json:"error,omitempty"`
	Failures int       `json:"failures,omitempty"`
	Retry    time.Time `json:"retry,omitzero"`
}

// trustedUID owns trusted profile files: root. Tests set their own uid.
var trustedUID uint32

type wantState struct {
	Name   string `json:"name"`
	From   string `json:"from"`
	Loaded bool   `json:"loaded"`
	Mode   string `json:"mode,omitempty"`
}

func check(args []string) int {
	fs := flag.NewFlagSet("armorshim check", flag.ContinueOnError)
	sysfs := fs.String("sysfs", "/sys", "root of sysfs")
	procfs := fs.String("procfs", "/proc", "root of procfs")
	configPath := fs.String("config", defaultConfigPath, "armorshim's configuration, for the policy, the profile directory and the denial logs (defaults are used if the default file does not exist)")
	output := fs.String("output", "text", "text or json")
	var wanted listFlag
	fs.Var(&wanted, "profile", "a profile that must be loaded (NAME or localhost/NAME); repeatable")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(os.Stderr, "armorshim check: --output must be text or json\n")
		return 2
	}
	cfg, usedPath, err := loadConfigForCheck(*configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "armorshim check:", err)
		return 1
	}
	pol, _ := cfg.Validate()
	h := host.NewReader(*sysfs, *procfs)
	r := buildReport(h.Snapshot(), pol, wanted)
	r.Policy.Config = usedPath
	r.addDenials(h, cfg.Denials)
	if cfg.Profiles.Directory != "" {
		r.addDirectory(&host.Loader{Dir: cfg.Profiles.Directory, Parser: cfg.Profiles.Parser, TrustedUID: trustedUID})
		r.addLoadStatus(cfg.Profiles.StatusFile)
	}
	r.finish()
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		r.print(os.Stdout)
	}
	if !r.OK {
		return 1
	}
	return 0
}

// loadConfigForCheck reads path; the default path may be absent, which
// means the defaults.
func loadConfigForCheck(path string) (*shim.Config, string, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && path == defaultConfigPath {
		return shim.DefaultConfig(), "", nil
	}
	cfg, err := shim.LoadConfig(path)
	return cfg, path, err
}

func buildReport(snap *apparmor.Snapshot, pol *apparmor.Policy, wanted []string) *checkReport {
	r := &checkReport{Profiles: []profileState{}, Wanted: []wantState{}, Missing: []string{}}
	r.AppArmor.Enabled = snap.Err == nil && snap.Enabled
	r.AppArmor.Detail = snap.Detail
	if snap.Err != nil {
		r.AppArmor.Error = snap.Err.Error()
	}
	for name, mode := range snap.Profiles {
		r.Profiles = append(r.Profiles, profileState{Name: name, Mode: string(mode)})
	}
	sort.Slice(r.Profiles, func(i, j int) bool { return r.Profiles[i].Name < r.Profiles[j].Name })

	r.Policy.Enabled = !pol.Disabled
	r.Policy.DefaultProfile = pol.Default.String()
	r.Policy.RequireEnforce = pol.RequireEnforce
	r.Policy.Modes = map[string][]string{}
	for _, rule := range apparmor.Rules {
		r.Policy.Modes[string(rule)] = pol.Mode(rule).Words()
	}
	for _, p := range pol.Allowed {
		r.Policy.AllowedProfiles = append(r.Policy.AllowedProfiles, p.String())
	}
	for _, ref := range wanted {
		r.want(strings.TrimPrefix(ref, apparmor.LocalhostPrefix), "--profile", snap)
	}
	for _, p := range append([]apparmor.Profile{pol.Default}, pol.Allowed...) {
		if p.Type == apparmor.Localhost {
			r.want(p.Name, "policy", snap)
		}
	}
	return r
}

func (r *checkReport) want(name, from string, snap *apparmor.Snapshot) {
	for _, w := range r.Wanted {
		if w.Name == name {
			return
		}
	}
	mode, loaded := snap.Profiles[name]
	r.Wanted = append(r.Wanted, wantState{Name: name, From: from, Loaded: loaded, Mode: string(mode)})
}

// addDirectory lists the profile directory's files and wants the profiles
// of the trusted ones.
func (r *checkReport) addDirectory(l *host.Loader) {
	d := &dirReport{Path: l.Dir}
	r.ProfileDirectory = d
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	refused, err := l.Refused()
	if err != nil {
		d.Error = err.Error()
		return
	}
	d.read = true
	names, err := l.Names(ctx)
	if err != nil {
		d.Error = err.Error() // the refused files are still listed
		names = map[string][]string{}
	}
	for f := range refused {
		names[f] = nil
	}
	loaded := map[string]string{}
	for _, p := range r.Profiles {
		loaded[p.Name] = p.Mode
	}
	files := make([]string, 0, len(names))
	for f := range names {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		d.Files = append(d.Files, dirEntry{File: f, Profiles: append([]string{}, names[f]...), Refused: refused[f]})
		for _, p := range names[f] {
			mode, ok := loaded[p]
			r.Wanted = append(r.Wanted, wantState{Name: p, From: "directory " + f, Loaded: ok, Mode: mode})
		}
	}
}

// addLoadStatus adds what the serving armorshim wrote of its loads.
func (r *checkReport) addLoadStatus(path string) {
	d := r.ProfileDirectory
	if path == "" || !d.read {
		return
	}
	d.StatusFile = path
	st, err := host.ReadStatus(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.StatusError = "no status: armorshim serve has not run with this configuration"
		return
	case err != nil:
		d.StatusError = err.Error()
		return
	case st.Directory != d.Path:
		d.StatusError = fmt.Sprintf("the status is of directory %s", st.Directory)
		return
	}
	d.StatusSince, d.Blocked = st.Since, st.Blocked
	loads := map[string]host.ProfileFile{}
	for _, f := range st.Files {
		loads[f.Name] = f
	}
	for i := range d.Files {
		e := &d.Files[i]
		f, ok := loads[e.File]
		if !ok || e.Refused != "" || f.Refused != "" {
			continue // not tried yet, or judged here
		}
		e.Load = f.State()
		e.Error, e.Failures, e.Retry = f.Error, f.Failures, f.Retry
	}
}

// addDenials says whether the denials reach a log armorshim follows.
func (r *checkReport) addDenials(h *host.Reader, d shim.DenialsConfig) {
	auditd, err := h.AuditdPid()
	kmsg, audit := host.ProbeDenialLogs(d.KernelLog, d.AuditLog)
	v := host.DenialsVisible(auditd, kmsg, audit)
	if d.AuditNetlink {
		v = host.NetlinkVisibility(host.ProbeAuditNetlink(), v)
	}
	r.Denials = denialsReport{Visible: v.Visible, Log: v.Log, Reason: v.Reason}
	if err != nil {
		r.Denials.Reason += " (cannot tell whether auditd runs: " + err.Error() + ")"
	}
}

func (r *checkReport) finish() {
	for _, w := range r.Wanted {
		if !w.Loaded {
			r.Missing = append(r.Missing, w.Name)
		}
	}
	r.OK = r.AppArmor.Enabled && len(r.Missing) == 0
	if d := r.ProfileDirectory; d != nil {
		for _, f := range d.Files {
			if f.Refused != "" || f.Load == "failed" {
				r.OK = false
			}
		}
	}
}

func (r *checkReport) print(w io.Writer) {
	switch {
	case r.AppArmor.Error != "":
		fmt.Fprintf(w, "AppArmor state cannot be read: %s\n", r.AppArmor.Error)
	case !r.AppArmor.Enabled:
		fmt.Fprintf(w, "AppArmor is not enabled on the host: %s\n", r.AppArmor.Detail)
	default:
		fmt.Fprintln(w, "AppArmor enabled")
		fmt.Fprintf(w, "Loaded profiles (%d):\n", len(r.Profiles))
		for _, p := range r.Profiles {
			fmt.Fprintf(w, "  %s (%s)\n", p.Name, p.Mode)
		}
	}
	src := r.Policy.Config
	if src == "" {
		src = "defaults"
	}
	fmt.Fprintf(w, "Policy (%s): enabled=%t defaultProfile=%q allowedProfiles=%q requireEnforce=%t\n",
		src, r.Policy.Enabled, r.Policy.DefaultProfile, r.Policy.AllowedProfiles, r.Policy.RequireEnforce)
	var modes []string
	dryRun := ""
	for _, rule := range apparmor.Rules {
		words := r.Policy.Modes[string(rule)]
		m := strings.Join(words, ", ")
		if len(words) > 1 {
			m = "[" + m + "]"
		}
		if m != "enforce" {
			dryRun = " (warn, audit: reported, not enforced)"
		}
		modes = append(modes, string(rule)+"="+m)
	}
	fmt.Fprintf(w, "Policy modes: %s%s\n", strings.Join(modes, " "), dryRun)
	if d := r.ProfileDirectory; d != nil {
		fmt.Fprintf(w, "Profile directory %s: %d files\n", d.Path, len(d.Files))
		if d.Error != "" {
			fmt.Fprintf(w, "  %s\n", d.Error)
		}
		switch {
		case d.StatusError != "":
			fmt.Fprintf(w, "  (loads: %s: %s)\n", d.StatusFile, d.StatusError)
		case d.StatusFile != "":
			fmt.Fprintf(w, "  (loads: %s, since %s)\n", d.StatusFile, d.StatusSince.Local().Format(time.DateTime))
		}
		if d.Blocked != "" {
			fmt.Fprintf(w, "  armorshim cannot load profiles: %s\n", d.Blocked)
		}
		for _, f := range d.Files {
			switch {
			case f.Refused != "":
				fmt.Fprintf(w, "  %s: refused: %s\n", f.File, f.Refused)
			case f.Load == "failed":
				fmt.Fprintf(w, "  %s: %s: load failed %d time(s), next try %s: %s\n", f.File, strings.Join(f.Profiles, ", "),
					f.Failures, f.Retry.Local().Format(time.DateTime), f.Error)
			default:
				fmt.Fprintf(w, "  %s: %s\n", f.File, strings.Join(f.Profiles, ", "))
			}
		}
	}
	if r.Denials.Visible {
		fmt.Fprintf(w, "Denials: visible in %s (%s)\n", r.Denials.Log, r.Denials.Reason)
	} else {
		fmt.Fprintf(w, "Denials: NOT VISIBLE: %s\n", r.Denials.Reason)
	}
	for _, p := range r.Wanted {
		if p.Loaded {
			fmt.Fprintf(w, "profile %q: loaded (%s) [%s]\n", p.Name, p.Mode, p.From)
		} else {
			fmt.Fprintf(w, "profile %q: not loaded [%s]\n", p.Name, p.From)
		}
	}
	if len(r.Missing) > 0 {
		fmt.Fprintf(w, "Missing profiles: %s\n", strings.Join(r.Missing, ", "))
	}
}

// load is `armorshim load DIR`: load every profile file of DIR once.
func load(args []string) int {
	fs := flag.NewFlagSet("armorshim load", flag.ContinueOnError)
	parser := fs.String("parser", "apparmor_parser", "the apparmor_parser command")
	sysfs := fs.String("sysfs", "/sys", "root of sysfs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: armorshim load [--parser CMD] DIR")
		return 2
	}
	h := host.NewReader(*sysfs, "/proc")
	l := &host.Loader{Dir: fs.Arg(0), Parser: *parser, TrustedUID: trustedUID, Enabled: func() bool {
		s := h.Snapshot()
		return s.Err == nil && s.Enabled
	}}
	done, err := l.Sync(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "armorshim load: %v\n", err)
		return 1
	}
	code := 0
	for _, f := range done {
		switch {
		case f.Refused != "":
			fmt.Printf("REFUSED %s: %s\n", f.Name, f.Refused)
			code = 1
		case f.Loaded:
			fmt.Printf("loaded %s\n", f.Name)
		default:
			fmt.Printf("FAILED %s: %s\n", f.Name, f.Error)
			code = 1
		}
	}
	if len(done) == 0 {
		fmt.Printf("no profile files in %s\n", fs.Arg(0))
	}
	return code
}
