package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func check(args []string) int {
	fs := flag.NewFlagSet("armorshim check", flag.ContinueOnError)
	sysfs := fs.String("sysfs", "/sys", "root of sysfs")
	procfs := fs.String("procfs", "/proc", "root of procfs")
	var wanted listFlag
	fs.Var(&wanted, "profile", "a profile that must be loaded (NAME or localhost/NAME); repeatable")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	snap := host.NewReader(*sysfs, *procfs).Snapshot()
	return report(os.Stdout, snap, wanted)
}

// report prints the host state and returns the exit code: 0 only if
// AppArmor is enabled and every wanted profile is loaded.
func report(w io.Writer, snap *apparmor.Snapshot, wanted []string) int {
	switch {
	case snap.Err != nil:
		fmt.Fprintf(w, "AppArmor state cannot be read: %v\n", snap.Err)
		return 1
	case !snap.Enabled:
		fmt.Fprintf(w, "AppArmor is not enabled on the host: %s\n", snap.Detail)
		return 1
	}
	fmt.Fprintln(w, "AppArmor enabled")
	names := make([]string, 0, len(snap.Profiles))
	for name := range snap.Profiles {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "Loaded profiles (%d):\n", len(names))
	for _, name := range names {
		fmt.Fprintf(w, "  %s (%s)\n", name, snap.Profiles[name])
	}
	code := 0
	for _, ref := range wanted {
		name := strings.TrimPrefix(ref, apparmor.LocalhostPrefix)
		if mode, ok := snap.Profiles[name]; ok {
			fmt.Fprintf(w, "profile %q: loaded (%s)\n", name, mode)
		} else {
			fmt.Fprintf(w, "profile %q: not loaded\n", name)
			code = 1
		}
	}
	return code
}
