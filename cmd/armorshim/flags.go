package main

import (
	"time"

	"github.com/armorshim/armorshim/shim"
)

type durationFlag struct{ d *shim.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return time.Duration(*f.d).String()
}

func (f durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d = shim.Duration(v)
	return nil
}
