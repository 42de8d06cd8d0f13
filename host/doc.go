// Package host owns armorshim's reads of the node's kernel interfaces: the
// AppArmor module parameter and securityfs (enabled?, loaded profiles and
// their modes, policy revision) and procfs. Every path is taken below a
// configurable root (--sysfs, --procfs) so tests can use a directory tree.
package host
