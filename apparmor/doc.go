// Package apparmor owns armorshim's AppArmor decisions: parsing and
// validating profile references, resolving which profile a CreateContainer
// request asks for, applying the node policy and checking the request against
// a snapshot of the host. It does no I/O: the host snapshot and the policy are
// handed in, and the result is either the request to forward or a refusal
// carrying the gRPC status the kubelet will see.
package apparmor
