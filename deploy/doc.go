// Package deploy owns the Kubernetes manifests shipped for operators and the
// tests that prove them. profiles-daemonset.yaml delivers AppArmor profiles
// to every node: a ConfigMap holds the profiles, and a DaemonSet syncs them
// into armorshim's profile directory (/etc/armorshim/profiles.d, a hostPath),
// which armorshim loads. The tests decode the manifest strictly into the
// Kubernetes API types and run the DaemonSet's sync script against a
// directory laid out as the kubelet lays out a ConfigMap volume: with
// /bin/sh, as root without capabilities (setpriv, when the tests run as
// root), and with busybox as in the image (busybox on PATH, or its path in
// ARMORSHIM_BUSYBOX; skipped without it).
//
// deploy/monitoring holds the Prometheus alert rules and the Grafana
// dashboard; they are checked by `make monitoring`.
package deploy
