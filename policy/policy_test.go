package policy

import (
	"net/netip"
	"testing"
	"time"
)

func mustWindow(t *testing.T, s string) Window {
	t.Helper()
	w, err := ParseWindow(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func at(t *testing.T, s, zone string) time.Time {
	t.Helper()
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	v, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestWindows(t *testing.T) {
	cases := []struct {
		window, when, zone string
		in                 bool
	}{
		{"Mon-Fri 08:00-18:00 America/New_York", "2026-12-07 08:00", "America/New_York", true}, // a Monday
		{"Mon-Fri 08:00-18:00 America/New_York", "2026-12-07 18:00", "America/New_York", false},
		{"Mon-Fri 08:00-18:00 America/New_York", "2026-12-06 12:00", "America/New_York", false}, // Sunday
		{"Mon-Fri 08:00-18:00 America/New_York", "2026-12-07 13:00", "UTC", true},               // 08:00 in New York
		{"Mon-Fri 08:00-18:00 America/New_York", "2026-12-07 12:59", "UTC", false},
		// DST: on 2026-03-08 New York skips 02:00-03:00; 08:00 local is 12:00 UTC after it.
		{"Sun 08:00-09:00 America/New_York", "2026-03-08 12:00", "UTC", true},
		{"Sun 02:00-03:00 America/New_York", "2026-03-08 07:30", "UTC", false}, // 03:30 EDT: the hour that does not exist is empty
		// On 2026-11-01 01:00-02:00 repeats: both 05:30 and 06:30 UTC are 01:30 local.
		{"Sun 01:00-02:00 America/New_York", "2026-11-01 05:30", "UTC", true},
		{"Sun 01:00-02:00 America/New_York", "2026-11-01 06:30", "UTC", true},
		{"Sun 02:00-03:00 Europe/Berlin", "2026-03-29 01:30", "UTC", false},         // 03:30 CEST
		{"Sun 02:00-03:00 Europe/Berlin", "2026-10-25 00:30", "UTC", true},          // 02:30 CEST
		{"Sun 02:00-03:00 Europe/Berlin", "2026-10-25 01:30", "UTC", true},          // 02:30 CET, the repeat
		{"Sat-Sun 00:00-24:00 Pacific/Kiritimati", "2026-12-04 10:30", "UTC", true}, // UTC+14: already Saturday
		{"Fri-Mon 22:00-23:00 Asia/Kolkata", "2026-12-06 16:45", "UTC", true},       // Sunday 22:15 IST (wrapping day range)
		{"Mon,Wed 09:00-10:00 UTC", "2026-12-09 09:59", "UTC", true},
		{"Mon,Wed 09:00-10:00 UTC", "2026-12-08 09:30", "UTC", false},
	}
	for _, c := range cases {
		if got := mustWindow(t, c.window).Contains(at(t, c.when, c.zone)); got != c.in {
			t.Errorf("%s at %s %s: %v, want %v", c.window, c.when, c.zone, got, c.in)
		}
	}
	for _, bad := range []string{"Mon-Fri 08:00-18:00", "Moo 08:00-18:00 UTC", "Mon 18:00-08:00 UTC", "Mon 08:00-25:00 UTC", "Mon 08:00-18:00 Mars/Olympus", "Mon 8-18 UTC"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q) accepted", bad)
		}
	}
}

func TestDecisions(t *testing.T) {
	nyc := mustWindow(t, "Mon-Fri 08:00-18:00 America/New_York")
	clinic, _ := ParsePrefix("10.0.0.0/8")
	v6, _ := ParsePrefix("2001:db8::/32")
	col := Column{
		Read: []Rule{
			{Index: 1, Roles: []string{"physician"}, Access: Plaintext, When: []Window{nyc}, From: []netip.Prefix{clinic, v6}},
			{Index: 2, Roles: []string{"billing"}, Access: MaskLast4},
			{Index: 3, Roles: []string{"physician"}, Access: MaskLast4},
		},
		Write:      []Rule{{Index: 1, Roles: []string{"registrar"}, Allow: true}, {Index: 2, Roles: []string{"intern"}, Allow: false}},
		Default:    Deny,
		BreakGlass: &BreakGlass{Roles: []string{"er_doctor"}, TTL: time.Hour},
	}
	weekday := at(t, "2026-12-07 10:00", "America/New_York")
	night := at(t, "2026-12-07 23:00", "America/New_York")
	ip := netip.MustParseAddr
	cases := []struct {
		name   string
		f      Facts
		access Access
		reason string
	}{
		{"physician in hours from the clinic", Facts{Roles: []string{"alice", "physician"}, Client: ip("10.1.2.3"), Now: weekday}, Plaintext, "read rule 1 (roles physician)"},
		{"physician from the clinic over IPv6", Facts{Roles: []string{"physician"}, Client: ip("2001:db8::7"), Now: weekday}, Plaintext, "read rule 1 (roles physician)"},
		{"physician through a v4-mapped address", Facts{Roles: []string{"physician"}, Client: ip("::ffff:10.9.9.9"), Now: weekday}, Plaintext, "read rule 1 (roles physician)"},
		{"physician at night: the next rule", Facts{Roles: []string{"physician"}, Client: ip("10.1.2.3"), Now: night}, MaskLast4, "read rule 3 (roles physician)"},
		{"physician from outside", Facts{Roles: []string{"physician"}, Client: ip("192.0.2.1"), Now: weekday}, MaskLast4, "read rule 3 (roles physician)"},
		{"billing", Facts{Roles: []string{"billing"}, Now: night}, MaskLast4, "read rule 2 (roles billing)"},
		{"intern: default", Facts{Roles: []string{"intern"}, Now: weekday}, Deny, "default"},
		{"break-glass within its TTL", Facts{Roles: []string{"er_doctor"}, Now: weekday, BreakGlassSince: weekday.Add(-30 * time.Minute)}, Plaintext, "break-glass (was default: deny)"},
		{"break-glass expired", Facts{Roles: []string{"er_doctor"}, Now: weekday, BreakGlassSince: weekday.Add(-61 * time.Minute)}, Deny, "default"},
		{"break-glass of a role it is not for", Facts{Roles: []string{"intern"}, Now: weekday, BreakGlassSince: weekday}, Deny, "default"},
	}
	for _, c := range cases {
		d := col.ReadDecision(&c.f)
		if d.Access != c.access || d.Reason != c.reason {
			t.Errorf("%s: %s (%s), want %s (%s)", c.name, d.Access, d.Reason, c.access, c.reason)
		}
	}
	for _, c := range []struct {
		roles []string
		allow bool
	}{{[]string{"registrar"}, true}, {[]string{"intern"}, false}, {[]string{"billing"}, false}} {
		if ok, why := col.WriteDecision(&Facts{Roles: c.roles}); ok != c.allow {
			t.Errorf("write by %v: %v (%s)", c.roles, ok, why)
		}
	}
	if ok, _ := (&Column{}).WriteDecision(&Facts{}); !ok {
		t.Error("no write rules: PostgreSQL decides, phiproxy allows")
	}
}

func TestMasks(t *testing.T) {
	cases := []struct {
		a       Access
		typ, in string
		want    string
	}{
		{MaskLast4, "text", "123-45-6789", "***-**-6789"},
		{MaskLast4, "varchar(11)", "123456789", "*****6789"},
		{MaskLast4, "text", "ab", "ab"},
		{MaskLast4, "text", "Zürich 8001 ü", "****** *001 ü"},
		{MaskRedact, "text", "diabetes", "****"},
		{MaskRedact, "varchar(2)", "ab", "**"},
		{MaskYear, "date", "1980-06-15", "1980-01-01"},
		{MaskYear, "date", "0044-03-15 BC", "0044-01-01 BC"},
		{MaskYear, "date", "infinity", "infinity"},
		{MaskYear, "timestamp", "1980-06-15 10:11:12.5", "1980-01-01 00:00:00"},
		{MaskYear, "timestamptz", "1980-06-15 10:11:12+00", "1980-01-01 00:00:00+00"},
	}
	for _, c := range cases {
		if got := string(AppendMask(nil, c.a, c.typ, []byte(c.in))); got != c.want {
			t.Errorf("%s of %s %q = %q, want %q", c.a, c.typ, c.in, got, c.want)
		}
	}
	for _, c := range []struct {
		a   Access
		typ string
		ok  bool
	}{{MaskLast4, "int8", false}, {MaskYear, "text", false}, {MaskRedact, "date", false}, {MaskYear, "timestamptz", true}, {Deny, "jsonb", true}} {
		if err := MaskApplies(c.a, c.typ); (err == nil) != c.ok {
			t.Errorf("MaskApplies(%s, %s) = %v", c.a, c.typ, err)
		}
	}
}
