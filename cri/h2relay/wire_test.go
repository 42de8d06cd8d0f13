package h2relay

import (
	"testing"
	"time"
)

func TestTimeoutEncoding(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{time.Nanosecond, "1n"},
		{99999999 * time.Nanosecond, "99999999n"},
		{100 * time.Millisecond, "100000u"},
		{2*time.Minute + 1, "120001m"},
		{30 * time.Hour, "108000S"},
		{time.Duration(1<<63 - 1), "2562048H"},
	} {
		got := encodeTimeout(c.d)
		if got != c.want {
			t.Errorf("encodeTimeout(%v) = %q, want %q", c.d, got, c.want)
		}
		back, ok := timeoutOf(got)
		if !ok || back < c.d {
			t.Errorf("timeoutOf(%q) = %v %v, want at least %v", got, back, ok, c.d)
		}
	}
	for _, v := range []string{"", "1", "1x", "-1S", "123456789S"} {
		if _, ok := timeoutOf(v); ok {
			t.Errorf("timeoutOf(%q) accepted", v)
		}
	}
	if d, ok := timeoutOf("99999999H"); !ok || d <= 0 {
		t.Errorf("timeoutOf(99999999H) = %v %v, want a long positive timeout", d, ok)
	}
}
