// Command armorshim-installer installs armorshim on a node from a
// privileged DaemonSet (deploy/installer.yaml), as kata-deploy does for
// Kata Containers: it checks that the node can take armorshim (systemd,
// AppArmor, a kubelet unit it knows, containerd) and leaves it untouched
// otherwise; installs the binary, the unit, the configuration from a
// ConfigMap and the kubelet drop-ins; starts armorshim and restarts the
// kubelet onto it; labels the node; reloads armorshim when the ConfigMap
// changes; and when the DaemonSet is deleted puts the kubelet back on
// containerd, then removes armorshim.
//
//	armorshim-installer run       the DaemonSet's container (default)
//	armorshim-installer cleanup   uninstall, then idle (the cleanup mode)
//	armorshim-installer ready     the readiness probe
//	armorshim-installer host-install|host-uninstall   the host side, run
//	                              by the two above under systemd-run
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/armorshim/armorshim/shim"
)

// kubeletSocket is where the kubelet drop-in
// (systemd/kubelet.conf.d/90-armorshim.conf) points the kubelet.
const kubeletSocket = "unix:///run/armorshim/armorshim.sock"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	log.SetFlags(0)
	log.SetPrefix("armorshim-installer: ")
	if err := run(os.Args[1:]); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "run"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	switch cmd {
	case "version":
		fmt.Println(version)
		return nil
	case "check-config":
		// Run on the host by the pod: the ConfigMap's configuration, loaded
		// as armorshim loads it, on the socket the kubelet drop-in names.
		if len(args) != 1 {
			return fmt.Errorf("usage: check-config FILE")
		}
		cfg, err := shim.LoadConfig(args[0])
		if err != nil {
			return err
		}
		if cfg.Listen != kubeletSocket {
			return fmt.Errorf("listen is %s: the kubelet drop-in points the kubelet at %s", cfg.Listen, kubeletSocket)
		}
		return nil
	case "ready":
		// The readiness probe: the pod installed armorshim, or reported
		// why it left the node untouched.
		_, err := os.Stat(readyFile)
		return err
	case "host-install", "host-uninstall":
		// The output goes to the journal; a reader gone must not end an
		// install half-way.
		signal.Ignore(syscall.SIGPIPE)
		h := &hostEnv{out: os.Stdout}
		fs.StringVar(&h.root, "root", "/", "the host's root (tests)")
		fs.StringVar(&h.systemctl, "systemctl", "systemctl", "systemctl command (tests)")
		fs.DurationVar(&h.wait, "wait", time.Minute, "how long armorshim and the kubelet may take to become active")
		fs.DurationVar(&h.settle, "settle", 10*time.Second, "how long they must then run without systemd restarting them")
		payload := fs.String("payload", "", "host-install: the staged payload directory")
		config := fs.String("config", "", "host-install: armorshim's configuration file to install")
		ver := fs.String("version", version, "host-install: the version installed")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if cmd == "host-uninstall" {
			return h.uninstall()
		}
		if *payload == "" {
			return fmt.Errorf("host-install: --payload is required")
		}
		return h.install(*payload, *config, *ver)
	case "run", "cleanup":
		p := &pod{version: version, out: os.Stdout}
		fs.StringVar(&p.hostRoot, "host-root", "/host", "where the host's root file system is mounted")
		fs.StringVar(&p.payload, "payload", "/payload", "the files to install")
		fs.StringVar(&p.config, "config", "/etc/armorshim-installer/config.yaml", "armorshim's configuration (the ConfigMap's file)")
		fs.StringVar(&p.containerdSock, "containerd-socket", "/run/containerd/containerd.sock", "containerd's socket on the host")
		fs.DurationVar(&p.syncEvery, "sync-interval", 5*time.Second, "how often the configuration is compared with the ConfigMap's")
		fs.StringVar(&p.daemonSet, "daemonset", os.Getenv("DAEMONSET_NAME"), "the DaemonSet running this pod (DAEMONSET_NAME)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		p.node, p.namespace = os.Getenv("NODE_NAME"), os.Getenv("POD_NAMESPACE")
		if p.node == "" || p.namespace == "" || p.daemonSet == "" {
			return fmt.Errorf("NODE_NAME, POD_NAMESPACE and DAEMONSET_NAME must be set (the manifest sets them)")
		}
		api, err := inCluster(serviceAccountDir)
		if err != nil {
			return err
		}
		p.api = api
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if cmd == "cleanup" {
			if err := p.cleanup(); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		}
		return p.run(ctx)
	}
	return fmt.Errorf("unknown command %q (run, cleanup, ready, host-install, host-uninstall, version)", cmd)
}
