// Command armorshim is a CRI proxy that runs between the kubelet and
// containerd and decides each container's AppArmor confinement.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/shim"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func usage(w io.Writer) {
	fmt.Fprintf(w, `Usage: armorshim [COMMAND] [flags]

Commands:
  serve          serve CRI between the kubelet and the runtime (the default)
  check          show the node's AppArmor state: [--profile NAME ...] [--output json]
  load DIR       load every profile file of DIR once
  profile generate NAME
                 write the profile NAME learned from pods (armorshim.io/learn)
                 into learning.directory, after apparmor_parser accepted it
  pss check      list this node's pods that would violate a Pod Security level:
                 --level LEVEL [--version V] [--namespace N]; exits 1 if any would
  version        print the version (also --version)
  help           this text (also --help, -h)

serve, check and pss check read %s unless --config names
another file; the defaults apply when that file does not exist.
Run "armorshim COMMAND -h" for a command's flags. The serve flags:
`, defaultConfigPath)
	logging := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(logging)
	own := flag.NewFlagSet("armorshim serve", flag.ContinueOnError)
	own.SetOutput(w)
	newServeFlags().fs.VisitAll(func(fl *flag.Flag) {
		if logging.Lookup(fl.Name) == nil {
			own.Var(fl.Value, fl.Name, fl.Usage)
		}
	})
	own.PrintDefaults()
	fmt.Fprintln(w, "\nand klog's logging flags (-v N for verbosity, -vmodule, ...): see \"armorshim serve -h\".")
}

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "--help", "-help", "-h":
			usage(os.Stdout)
			return
		case "--version", "-version":
			fmt.Println("armorshim", versionString())
			return
		}
		if len(args[0]) > 0 && args[0][0] != '-' {
			cmd, args = args[0], args[1:]
		}
	}
	switch cmd {
	case "serve":
		os.Exit(serve(args))
	case "check":
		os.Exit(check(args))
	case "pss":
		os.Exit(podSecurity(args))
	case "load":
		os.Exit(load(args))
	case "profile":
		os.Exit(profileCmd(args, os.Stdout, os.Stderr))
	case "version":
		fmt.Println("armorshim", versionString())
	case "help":
		usage(os.Stdout)
	default:
		fmt.Fprintf(os.Stderr, "armorshim: unknown command %q\n", cmd)
		usage(os.Stderr)
		os.Exit(2)
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "(unknown)"
}

// serveFlags binds the serve flags to a configuration; only flags set on the
// command line override the file.
type serveFlags struct {
	fs         *flag.FlagSet
	configPath string
	values     *shim.Config
}

func newServeFlags() *serveFlags {
	d := shim.DefaultConfig()
	f := &serveFlags{fs: flag.NewFlagSet("armorshim serve", flag.ContinueOnError), values: d}
	fs := f.fs
	fs.StringVar(&f.configPath, "config", defaultConfigPath, "YAML configuration file ("+shim.APIVersion+", kind "+shim.Kind+"); flags set on the command line override it. The defaults apply if the default file does not exist; --config= reads none")
	fs.StringVar(&d.Listen, "listen", d.Listen, "socket to serve CRI on: unix:///path, or fd:// for a socket passed by systemd")
	fs.StringVar(&d.SocketGroup, "socket-group", d.SocketGroup, "group owning the socket (name or gid); mode is 0660")
	fs.StringVar(&d.RuntimeEndpoint, "runtime-endpoint", d.RuntimeEndpoint, "the container runtime's CRI socket")
	fs.StringVar(&d.ImageEndpoint, "image-endpoint", d.ImageEndpoint, "the image service's CRI socket (default: the runtime endpoint)")
	fs.StringVar(&d.Sysfs, "sysfs", d.Sysfs, "root of sysfs: AppArmor state is read below it")
	fs.StringVar(&d.Procfs, "procfs", d.Procfs, "root of procfs")
	fs.IntVar(&d.MaxMessageSize, "max-message-size", d.MaxMessageSize, "largest CRI message in bytes, both ways (the kubelet's limit is 16 MiB)")
	fs.Int64Var(&d.MaxHeldRequestBytes, "max-held-request-bytes", d.MaxHeldRequestBytes, "most bytes of requests held whole to decide them (CreateContainer...), all connections together; past it a new held call fails with ResourceExhausted; at least --max-message-size + 5")
	fs.Var(durationFlag{&d.ShutdownTimeout}, "shutdown-timeout", "how long in-flight calls may finish on SIGTERM/SIGINT")
	fs.StringVar(&d.Profiles.Directory, "profiles-dir", d.Profiles.Directory, "directory of AppArmor profile files to keep loaded with apparmor_parser (empty: off)")
	fs.StringVar(&d.NodeFeatures.Directory, "node-features-dir", d.NodeFeatures.Directory, "node-feature-discovery features.d directory to write AppArmor labels to (empty: off)")
	fs.StringVar(&d.MetricsAddress, "metrics-address", d.MetricsAddress, "loopback host:port serving Prometheus metrics at /metrics, e.g. 127.0.0.1:9753 (default: off)")
	klog.InitFlags(fs)
	return f
}

// config returns the file's configuration with the set flags applied.
func (f *serveFlags) config() (*shim.Config, error) {
	cfg := shim.DefaultConfig()
	if f.configPath != "" {
		var err error
		if cfg, _, err = loadConfigForCheck(f.configPath); err != nil {
			return nil, err
		}
	}
	set := map[string]func(){
		"listen":                 func() { cfg.Listen = f.values.Listen },
		"socket-group":           func() { cfg.SocketGroup = f.values.SocketGroup },
		"runtime-endpoint":       func() { cfg.RuntimeEndpoint = f.values.RuntimeEndpoint },
		"image-endpoint":         func() { cfg.ImageEndpoint = f.values.ImageEndpoint },
		"sysfs":                  func() { cfg.Sysfs = f.values.Sysfs },
		"procfs":                 func() { cfg.Procfs = f.values.Procfs },
		"max-message-size":       func() { cfg.MaxMessageSize = f.values.MaxMessageSize },
		"max-held-request-bytes": func() { cfg.MaxHeldRequestBytes = f.values.MaxHeldRequestBytes },
		"shutdown-timeout":       func() { cfg.ShutdownTimeout = f.values.ShutdownTimeout },
		"metrics-address":        func() { cfg.MetricsAddress = f.values.MetricsAddress },
		"profiles-dir":           func() { cfg.Profiles.Directory = f.values.Profiles.Directory },
		"node-features-dir":      func() { cfg.NodeFeatures.Directory = f.values.NodeFeatures.Directory },
	}
	f.fs.Visit(func(fl *flag.Flag) {
		if apply, ok := set[fl.Name]; ok {
			apply()
		}
	})
	if _, err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func serve(args []string) int {
	f := newServeFlags()
	if err := f.fs.Parse(args); err != nil {
		return 2
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "armorshim serve: unexpected arguments %q\n", f.fs.Args())
		return 2
	}
	defer klog.Flush()
	cfg, err := f.config()
	if err != nil {
		klog.ErrorS(err, "Invalid configuration")
		return 1
	}
	var reload func() (*shim.Config, error)
	if f.configPath != "" {
		reload = f.config
		if _, err := os.Stat(f.configPath); err != nil {
			klog.InfoS("No configuration file; using the defaults and the flags", "config", f.configPath)
		}
	}
	srv, err := shim.New(cfg, reload)
	if err != nil {
		klog.ErrorS(err, "Cannot start")
		return 1
	}
	klog.InfoS("Starting armorshim", "version", versionString())
	if err := srv.Run(context.Background()); err != nil {
		klog.ErrorS(err, "armorshim stopped")
		return 1
	}
	return 0
}
