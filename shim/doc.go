// Package shim owns armorshim's server lifecycle: the configuration, the
// listening socket (or systemd's), the relay that serves it, the long-lived
// backend connections of armorshim's own calls, the in-memory health
// server, systemd readiness, signals, config reload and a bounded drain on
// shutdown.
package shim
