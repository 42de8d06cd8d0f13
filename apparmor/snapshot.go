package apparmor

// Mode is the mode a loaded profile runs in, as securityfs prints it:
// enforce, complain, kill, unconfined, user, ...
type Mode string

const (
	ModeEnforce  Mode = "enforce"
	ModeComplain Mode = "complain"
)

// Snapshot is what the host said about AppArmor at one moment. Snapshots are
// shared between concurrent decisions and must not be modified.
type Snapshot struct {
	// Enabled: the kernel module is on and securityfs shows its interface.
	Enabled bool
	// Detail says why AppArmor is not enabled or not readable, for operators.
	Detail string
	// Err is set when the host state could not be read; decisions that need
	// the host then fail closed.
	Err error
	// Revision is securityfs's policy revision the profiles were read at.
	Revision string
	// Profiles maps each loaded profile's full name to its mode.
	Profiles map[string]Mode
}
