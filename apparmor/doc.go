// Package apparmor owns armorshim's AppArmor decisions: parsing and
// validating profile references, resolving which profile a CreateContainer
// request asks for, applying the node policy and checking the request against
// a snapshot of the host. It does no I/O: the host snapshot and the policy are
// handed in, and the result is either the request to forward or a refusal
// carrying the gRPC status the kubelet will see.
//
// It also decides learning: which pods may learn a profile, the learning
// profile a learning container runs under, and the profile generated from
// the accesses it was allowed (GenerateProfile).
package apparmor
