package cri

import runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

// WaitIdle returns once no denial waits for a runtime lookup.
func (d *Denials) WaitIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.pending > 0 {
		d.idle.Wait()
	}
}

// AttestedFromConfig records what attestation read of a started container
// created before armorshim started: its profile, and its names from the
// runtime's copy of its config.
func (d *Denials) AttestedFromConfig(id string, cfg *runtimeapi.ContainerConfig, profile string) {
	d.attested(id, targetOfConfig(cfg), profile)
}
