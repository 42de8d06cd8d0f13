package pss

import (
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageUser is the user an image runs as, as the runtime's ImageStatus
// reports it: a numeric UID, or a user name when the image's USER is not
// numeric. Both empty: the image names no user and runs as root.
type ImageUser struct {
	UID      *int64
	Username string
}

// ImageUserOf reads the user of an ImageStatus image (nil image: unknown).
func ImageUserOf(img *runtimeapi.Image) *ImageUser {
	if img == nil {
		return nil
	}
	u := &ImageUser{Username: img.GetUsername()}
	if img.GetUid() != nil {
		u.UID = ptr(img.GetUid().GetValue())
	}
	return u
}

// ParseImageUser reads an image config's User string: "uid", "name",
// "uid:gid" or "name:group"; "" runs as root.
func ParseImageUser(s string) *ImageUser {
	user, _, _ := strings.Cut(s, ":")
	if n, err := strconv.ParseInt(user, 10, 64); err == nil {
		return &ImageUser{UID: &n}
	}
	return &ImageUser{Username: user}
}

// NonRoot says whether a container is known to run as a non-root user, as
// the kubelet verifies runAsNonRoot: run_as_user if set, else
// run_as_username, else the image's user. A user name other than "root"
// cannot be verified (the kubelet refuses it under runAsNonRoot), so only
// a numeric non-zero UID counts as non-root. image nil: unknown.
func NonRoot(runAsUser *runtimeapi.Int64Value, runAsUsername string, image *ImageUser) bool {
	if runAsUser != nil {
		return runAsUser.GetValue() != 0
	}
	if runAsUsername != "" {
		return uidNonRoot(ParseImageUser(runAsUsername))
	}
	if image == nil {
		return false
	}
	return uidNonRoot(image)
}

func uidNonRoot(u *ImageUser) bool {
	if u.UID != nil {
		return *u.UID != 0
	}
	if u.Username != "" {
		// Some runtimes report a numeric user as a name.
		if n, err := strconv.ParseInt(u.Username, 10, 64); err == nil {
			return n != 0
		}
	}
	return false
}

// FromImage says whether a container's run_as_user is the image's user
// that the kubelet copied: with no runAsUser on the container or the pod,
// the kubelet sends the image's UID (0 for an image without a USER,
// "treat it as root"). A value equal to the image's, with no pod-level
// value, therefore counts as not set; image nil: unknown, so it counts as
// set.
func FromImage(runAsUser *runtimeapi.Int64Value, podLevel bool, image *ImageUser) bool {
	if runAsUser == nil || podLevel || image == nil {
		return false
	}
	uid := int64(0) // no USER: root
	switch {
	case image.UID != nil:
		uid = *image.UID
	case image.Username == "" || image.Username == "root":
	default:
		n, err := strconv.ParseInt(image.Username, 10, 64)
		if err != nil {
			return false // a name: the kubelet sends run_as_username instead
		}
		uid = n
	}
	return runAsUser.GetValue() == uid
}

// NeedsImageUser says whether the image's user can change what a
// container is judged as: the run-as fields leave the user to the image
// (runAsNonRoot), or run_as_user may be the image's that the kubelet
// copied (runAsUser). sandbox is the request's sandbox config.
func NeedsImageUser(cc *runtimeapi.ContainerConfig, sandbox *runtimeapi.PodSandboxConfig) bool {
	sc := cc.GetLinux().GetSecurityContext()
	if sc.GetRunAsUser() == nil {
		return sc.GetRunAsUsername() == ""
	}
	return sandbox.GetLinux().GetSecurityContext().GetRunAsUser() == nil
}
