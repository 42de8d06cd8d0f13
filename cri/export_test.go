package cri

// WaitIdle returns once no denial waits for a runtime lookup.
func (d *Denials) WaitIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.pending > 0 {
		d.idle.Wait()
	}
}

// AttestedFromInfo records what attestation read of a started container
// created before armorshim started: its profile, and its names from the
// runtime's copy of its config in its verbose info.
func (d *Denials) AttestedFromInfo(id string, info []byte, profile string) error {
	_, cfg, err := parseInfo(info, true)
	if err != nil {
		return err
	}
	d.attested(id, targetOfConfig(cfg), profile)
	return nil
}
