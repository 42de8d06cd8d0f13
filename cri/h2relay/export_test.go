package h2relay

import "time"

// NewWithTimeouts is New with the handshake and keepalive timeouts given.
func NewWithTimeouts(cfg Config, handshake, keepalive, keepaliveTimeout time.Duration) *Relay {
	r := New(cfg)
	r.timeouts = timeouts{handshake, keepalive, keepaliveTimeout}
	return r
}
