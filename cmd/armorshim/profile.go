package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/armorshim/armorshim/shim"
)

// profileCmd runs `armorshim profile generate NAME`.
func profileCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "generate" {
		fmt.Fprintln(stderr, "Usage: armorshim profile generate NAME [--config FILE]")
		return 2
	}
	fs := flag.NewFlagSet("armorshim profile generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "armorshim's configuration, for learning.directory and profiles.parser")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: armorshim profile generate NAME [flags]\n\n"+
			"Writes the profile NAME learned from the pods that asked for it\n"+
			"(armorshim.io/learn: NAME) into learning.directory/NAME/NAME, after\n"+
			"apparmor_parser accepted it, and prints it. It is never written into\n"+
			"the profile directory armorshim enforces: review it, then copy it there.\n\n")
		fs.PrintDefaults()
	}
	name := ""
	rest := args[1:]
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		name, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	}
	if name == "" {
		fs.Usage()
		return 2
	}
	cfg, _, err := loadConfigForCheck(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "armorshim profile generate: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := shim.GenerateProfile(ctx, cfg, name)
	if err != nil {
		fmt.Fprintf(stderr, "armorshim profile generate: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, g.Text)
	fmt.Fprintf(stderr, "armorshim profile generate: wrote %s (learned from %d pods, %d records); copy it into the profile directory to enforce it\n",
		g.Path, len(g.From.Pods), g.From.Records)
	return 0
}
