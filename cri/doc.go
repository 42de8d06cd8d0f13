// Package cri owns armorshim's CRI proxy: a gRPC stream handler that forwards
// every RuntimeService and ImageService call — and any method it does not
// know — to the backend as raw bytes, keeping status, metadata, deadlines
// and cancellation, and that decodes CreateContainer alone to apply the
// AppArmor decision before forwarding or refusing it.
package cri
