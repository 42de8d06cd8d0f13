// Package host owns armorshim's reads of the node's kernel interfaces and
// logs: the AppArmor module parameter and securityfs (enabled?, loaded
// profiles and their modes, policy revision), procfs (a process's
// confinement and container, whether auditd runs), and the logs that
// carry AppArmor denials (/dev/kmsg, auditd's log). Every path is taken
// below a configurable root or path (--sysfs, --procfs, the configured
// logs) so tests can use a directory tree; what to make of what is read
// (DenialsVisible) is decided by pure functions.
//
// It also owns the profile directory: which of its files are trusted, and
// keeping the trusted ones loaded with apparmor_parser; and the learning
// store: learning profiles loaded and removed, and what they allowed kept
// on disk (LearningStore).
package host
