package policy

import (
	"testing"
	"time"
)

// FuzzParseWindow: a window's text never panics the parser; a window it
// accepts has hours within a day and a time zone, answers Contains for
// any instant, and parses again from its own text to the same window.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"Mon-Fri 08:00-18:00 America/New_York", "Sat-Sun 00:00-24:00 UTC", "Fri-Mon 22:00-23:00 Asia/Kolkata",
		"Mon,Wed 09:00-10:00 Europe/Berlin", "Mon 8-18 UTC", "", "Mon-Fri 18:00-08:00 UTC", "Sun 02:00-03:00 Pacific/Kiritimati"} {
		f.Add(s, int64(1796500000))
	}
	f.Fuzz(func(t *testing.T, s string, unix int64) {
		w, err := ParseWindow(s)
		if err != nil {
			return
		}
		if w.Start < 0 || w.End > 24*60 || w.Start >= w.End || w.Loc == nil {
			t.Fatalf("ParseWindow(%q) accepted %+v", s, w)
		}
		_ = w.Contains(time.Unix(unix%(1<<40), 0))
		again, err := ParseWindow(w.String())
		if err != nil || again.Days != w.Days || again.Start != w.Start || again.End != w.End || again.Loc.String() != w.Loc.String() {
			t.Fatalf("ParseWindow(%q) does not parse back from %q: %+v, %v", s, w.String(), again, err)
		}
	})
}

// FuzzAccessAndPrefix: access and CIDR texts never panic; what they
// accept prints back to something that parses to the same value.
func FuzzAccessAndPrefix(f *testing.F) {
	for _, s := range []string{"plaintext", "mask:last4", "mask:year", "mask:redact", "deny", "mask:", "10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.1", "10.0.0.0/33"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if a, err := ParseAccess(s); err == nil {
			if b, err := ParseAccess(a.String()); err != nil || b != a {
				t.Fatalf("ParseAccess(%q) = %s, which parses to %s, %v", s, a, b, err)
			}
		}
		if p, err := ParsePrefix(s); err == nil {
			if q, err := ParsePrefix(p.String()); err != nil || q != p {
				t.Fatalf("ParsePrefix(%q) = %s, which parses to %s, %v", s, p, q, err)
			}
		}
	})
}
