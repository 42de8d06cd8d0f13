package main

import (
	"flag"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// runRelay is the l4-relay mode: a byte relay that copies each connection to
// a connection of its own to the backend, with no HTTP/2 or gRPC at all. It
// cannot decide anything, so it is no design for armorshim; it is the floor
// of "one more cross-process hop" that any proxy pays, shown next to the two
// real proxies.
func runRelay(args []string) error {
	fs := flag.NewFlagSet("l4-relay", flag.ContinueOnError)
	listen := fs.String("listen", "", "unix socket path to serve on")
	backend := fs.String("runtime-endpoint", "", "unix socket path of the runtime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	os.Remove(*listen)
	l, err := net.Listen("unix", *listen)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			return nil // closed on signal
		}
		go func() {
			defer c.Close()
			b, err := net.Dial("unix", *backend)
			if err != nil {
				return
			}
			defer b.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(b, c); done <- struct{}{} }()
			go func() { io.Copy(c, b); done <- struct{}{} }()
			<-done
		}()
	}
}
