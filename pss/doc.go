// Package pss owns armorshim's node-side Pod Security Standards decisions:
// it rebuilds a pod's security-relevant facts from CRI requests
// (RunPodSandbox, CreateContainer, or the runtime's stored configs) as
// k8s.io/api core/v1 objects, evaluates them with the upstream checks of
// k8s.io/pod-security-admission, and words the outcome as Pod Security
// Admission does. It reads the PodSecurity configuration (an
// AdmissionConfiguration or a bare PodSecurityConfiguration) from bytes.
// Like package apparmor it is pure: no I/O; the cri layer fetches what it
// needs (such as the image's user) and passes it in.
package pss
