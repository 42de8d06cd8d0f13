// Package host owns armorshim's reads of the node's kernel interfaces: the
// AppArmor module parameter and securityfs (enabled?, loaded profiles and
// their modes, policy revision) and procfs. Every path is taken below a
// configurable root (--sysfs, --procfs) so tests can use a directory tree.
//
// It also owns the profile directory: which of its files are trusted, and
// keeping the trusted ones loaded with apparmor_parser.
package host
