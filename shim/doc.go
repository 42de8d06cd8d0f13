// Package shim owns armorshim's server lifecycle: the configuration, the
// listening socket (or systemd's), the long-lived backend connections, the
// gRPC server that hosts the CRI proxy, systemd readiness, signals, config
// reload and a bounded drain on shutdown.
package shim
