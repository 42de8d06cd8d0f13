package cri

// WaitIdle returns once no denial waits for a runtime lookup.
func (d *Denials) WaitIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.pending > 0 {
		d.idle.Wait()
	}
}
