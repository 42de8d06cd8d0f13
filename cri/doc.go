// Package cri owns armorshim's CRI proxy: a gRPC stream handler that forwards
// every RuntimeService and ImageService call — and any method it does not
// know — to the backend as raw bytes, keeping status, metadata, deadlines
// and cancellation. It decodes CreateContainer to apply the AppArmor
// decision before forwarding or refusing it and, while Pod Security is
// configured, RunPodSandbox and CreateContainer to apply the pss decision
// (refuse, warn, audit); accepted requests keep their bytes. It also reads
// the node's running pods from the runtime for `armorshim pss check`.
package cri
