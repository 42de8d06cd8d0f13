// Package cri owns armorshim's CRI proxy. Calls travel through the HTTP/2
// stream relay of package h2relay as bytes, with their status, metadata,
// deadlines and cancellation; cri routes each one (runtime, image service,
// armorshim's own health service) and holds the few it decides on:
// CreateContainer for the AppArmor decision (forwarded, rewritten only when
// the decision changes it, or refused) and, while configured, RunPodSandbox
// and CreateContainer for Pod Security (refuse, warn, audit) and
// StartContainer for start attestation. While denials are attributed
// (Denials) it also holds StartContainer, StopContainer, RemoveContainer,
// StopPodSandbox and RemovePodSandbox, forwarded unchanged, to keep the
// index of containers that attribution reads. It also reads the node's
// running pods from the runtime for `armorshim pss check`.
//
// For attestation it follows containerd's task start events on the runtime
// connection (TaskEvents), which give a started container's process id;
// for learning (WithLearning) it runs a learning pod's containers under
// their learning profiles and hands the kernel's ALLOWED records of those
// profiles to the learning store.
package cri
