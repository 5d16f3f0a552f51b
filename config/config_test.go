package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `listen: 127.0.0.1:6432
upstream: {address: 127.0.0.1:5432}
catalog_dsn: postgres://cat@127.0.0.1:5432/clinic
`

func TestLoadAppliesDefaults(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "phiproxy.yaml")
	if err := os.WriteFile(p, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	checks := []struct{ name, got, want string }{
		{"the instance is named after the host", c.Instance, host},
		{"client tls off by default", c.ClientTLS.Mode, TLSDisable},
		{"upstream sslmode prefer like libpq", c.Upstream.SSLMode, "prefer"},
		{"auth terminates by default", c.Auth.Mode, AuthTerminate},
		{"audit strict by default", c.Audit.Mode, "strict"},
		{"audit dir beside the config", c.Audit.File.Dir, filepath.Join(dir, "audit")},
		{"state dir beside the config", c.StateDir, filepath.Join(dir, "state")},
		{"kek beside the config", c.Keys.KEK, "file:" + filepath.Join(dir, "kek.json")},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s: got %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if len(c.PHI) != 0 {
		t.Errorf("no phi section must mean pure pass-through, got %v", c.PHI)
	}
	named, err := Parse([]byte("instance: px-1\n"+minimal), "")
	if err != nil || named.Instance != "px-1" {
		t.Errorf("instance: px-1 gives %q, %v", named.Instance, err)
	}
}

func TestPHIColumns(t *testing.T) {
	doc := minimal + `keys: {dir: k/, kek: "file:kek.json"}
phi:
  public.patients:
    ssn: {type: text, mode: deterministic, default: plaintext}
    dob: {type: date, mode: randomized}
  visits:
    patient_ssn: {type: text, mode: deterministic, key: public.patients.ssn, default: plaintext}
`
	c, err := Parse([]byte(doc), "/etc/phiproxy/p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ssn, ok := c.Column("public", "patients", "ssn")
	if !ok || ssn.Key != "public.patients.ssn" || ssn.Mode != ModeDeterministic || ssn.Line != 7 {
		t.Fatalf("ssn = %+v", ssn)
	}
	dob, _ := c.Column("public", "patients", "dob")
	if dob.Default != AccessDeny {
		t.Fatalf("absent default must be deny, got %q", dob.Default)
	}
	if ps, ok := c.Column("public", "visits", "patient_ssn"); !ok || ps.Key != "public.patients.ssn" {
		t.Fatalf("unqualified relation must default to public and keep the shared key: %+v", ps)
	}
	if got := c.Relations(); strings.Join(got, ",") != "public.patients,public.visits" {
		t.Fatalf("relations = %v", got)
	}
	if len(c.KeyNames()["public.patients.ssn"]) != 2 {
		t.Fatal("shared key must list both columns")
	}
	if c.Keys.Dir != "/etc/phiproxy/k" || c.Keys.KEK != "file:/etc/phiproxy/kek.json" {
		t.Fatalf("keys = %+v", c.Keys)
	}
}

func TestLoadErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown top-level key", minimal + "listne: x\n", []string{":4:", `unknown key "listne" (did you mean "listen"?)`}},
		{"unknown column key", minimal + "phi:\n  public.p:\n    ssn: {type: text, mode: randomized, colour: red}\n", []string{":6:", `unknown key "colour"`}},
		{"unknown type", minimal + "phi:\n  public.p:\n    ssn: {type: blob, mode: randomized}\n", []string{":6:", "type \"blob\""}},
		{"unknown mode", minimal + "phi:\n  public.p:\n    ssn: {type: text, mode: fast}\n", []string{":6:", "mode \"fast\""}},
		{"a typo and another problem, all at once, in YAML's words", minimal + "limits: {max_connections: lots}\nphi:\n  public.p:\n    dob: {type: date, mode: randomized, defualt: mask:year}\n", []string{":4: the text \"lots\" where the config wants a whole number", `:7: unknown key "defualt" (did you mean "default"?)`}},
		{"a mask on a type it cannot apply to", minimal + "phi:\n  public.p:\n    n: {type: int8, mode: randomized, default: mask:last4}\n", []string{":6:", "mask:last4 does not apply to a int8 column"}},
		{"an unknown mask", minimal + "phi:\n  public.p:\n    ssn: {type: text, mode: randomized, default: mask:first2}\n", []string{":6:", "unknown mask"}},
		{"a bad CIDR", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      read:\n" + "        - {roles: [a], access: plaintext, from: [10.0.0.0/33]}\n", []string{":10:", "read rule 1", "is not a CIDR"}},
		{"a bad window", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      read:\n" + "        - {roles: [a], access: plaintext, when: \"Mon-Fri 18:00-08:00 UTC\"}\n", []string{":10:", "start before the end"}},
		{"an unknown zone", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      read:\n" + "        - {roles: [a], access: plaintext, when: \"Mon 08:00-09:00 Mars/Base\"}\n", []string{":10:", "unknown time zone"}},
		{"a rule that can never match", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      read:\n" + "        - {roles: [a, b], access: plaintext}\n        - {roles: [a], access: deny}\n", []string{"rule 2 can never match: rule 1"}},
		{"a typo in a rule", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      read:\n" + "        - {roles: [a], acess: plaintext}\n", []string{":10:", `unknown key "acess"`, `did you mean "access"?`}},
		{"a write rule with a read access", minimal + "phi:\n  public.p:\n    ssn:\n      type: text\n      mode: randomized\n      write: [{roles: [a], access: plaintext}]\n", []string{":9:", "not one of allow, deny"}},
		{"break_glass without roles", minimal + "phi:\n  public.p:\n    ssn: {type: text, mode: randomized, break_glass: {ttl: 1h}}\n", []string{":6:", "break_glass needs roles"}},
		{"shared key must agree", minimal + "phi:\n  public.a:\n    x: {type: text, mode: deterministic, key: k}\n  public.b:\n    y: {type: int4, mode: deterministic, key: k}\n", []string{":8:", "shares key k"}},
		{"shared key must agree on the modifier", minimal + "phi:\n  public.a:\n    x: {type: \"numeric(5,2)\", mode: deterministic, key: k}\n  public.b:\n    y: {type: \"numeric(6,3)\", mode: deterministic, key: k}\n", []string{":8:", "shares key k"}},
		{"unknown enforce", minimal + "phi:\n  public.p:\n    ssn: {type: text, mode: randomized, enforce: maybe}\n", []string{":6:", `enforce "maybe" is not one of on, observe`}},
		{"shared key must agree on enforce", minimal + "phi:\n  public.a:\n    x: {type: text, mode: deterministic, key: k, enforce: observe}\n  public.b:\n    y: {type: text, mode: deterministic, key: k}\n", []string{":8:", "differs in enforce"}},
		{"varchar length zero", minimal + "phi:\n  public.p:\n    ssn: {type: varchar(0), mode: randomized}\n", []string{":6:", "length must be between 1 and"}},
		{"scale above precision", minimal + "phi:\n  public.p:\n    n: {type: \"numeric(2,3)\", mode: randomized}\n", []string{":6:", "scale between 0 and the precision"}},
		{"timestamp precision above 6", minimal + "phi:\n  public.p:\n    t: {type: timestamp(7), mode: randomized}\n", []string{":6:", "precision must be between 0 and 6"}},
		{"modifier on a type without one", minimal + "phi:\n  public.p:\n    n: {type: int4(3), mode: randomized}\n", []string{":6:", "int4 takes no modifier"}},
		{"bpchar needs a length", minimal + "phi:\n  public.p:\n    c: {type: bpchar, mode: randomized}\n", []string{":6:", "needs a length"}},
		{"malformed modifier", minimal + "phi:\n  public.p:\n    c: {type: varchar(a), mode: randomized}\n", []string{":6:", "varchar(a)"}},
		{"bad sslmode", "listen: 127.0.0.1:1\nupstream: {address: 127.0.0.1:5432, sslmode: sometimes}\ncatalog_dsn: postgres://a@b/c\n", []string{":2:", "sslmode"}},
		{"verify-full needs a root cert", "listen: 127.0.0.1:1\nupstream: {address: 127.0.0.1:5432, sslmode: verify-full}\ncatalog_dsn: postgres://a@b/c\n", []string{"sslrootcert"}},
		{"client tls require needs cert", minimal + "client_tls: {mode: require}\n", []string{":4:", "needs cert and key"}},
		{"password in catalog dsn", "listen: 127.0.0.1:1\nupstream: {address: 127.0.0.1:5432}\ncatalog_dsn: postgres://a:secret@b/c\n", []string{":3:", "PGPASSFILE"}},
		{"listen missing", "upstream: {address: 127.0.0.1:5432}\ncatalog_dsn: postgres://a@b/c\n", []string{"listen is required"}},
		{"bad kek", minimal + "keys: {kek: \"s3://x\"}\n", []string{":4:", "keys.kek"}},
		{"negative max_connections", minimal + "limits: {max_connections: -1}\n", []string{":4:", "limits.max_connections"}},
		{"idle timeout without a unit", minimal + "limits:\n  idle_session_timeout: 600\n", []string{":5:", "limits.idle_session_timeout", "no unit"}},
		{"idle timeout not a duration", minimal + "limits:\n  max_connections: 3\n  idle_in_transaction_timeout: soon\n", []string{":6:", "limits.idle_in_transaction_timeout"}},
		{"negative idle timeout", minimal + "limits: {idle_session_timeout: -5s}\n", []string{":4:", "out of range"}},
		{"idle timeout beyond PostgreSQL's range", minimal + "limits: {idle_session_timeout: 30d}\n", []string{":4:", "out of range"}},
		{"all problems at once", "listen: nope\nupstream: {address: nope}\ncatalog_dsn: postgres://a@b/c\n", []string{":1:", ":2:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "p.yaml")
			if err == nil {
				t.Fatal("expected an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseLogicalType(t *testing.T) {
	for in, want := range map[string]struct {
		canon  string
		typmod int32
	}{
		"text": {"text", -1}, "varchar": {"varchar", -1}, "varchar(11)": {"varchar(11)", 15},
		"character varying(3)": {"varchar(3)", 7}, "VARCHAR ( 3 )": {"varchar(3)", 7},
		"char": {"bpchar(1)", 5}, "character(4)": {"bpchar(4)", 8}, "bpchar(2)": {"bpchar(2)", 6},
		"numeric(5,2)": {"numeric(5,2)", 5<<16 | 2 + 4}, "decimal(5)": {"numeric(5,0)", 5<<16 + 4}, "numeric": {"numeric", -1},
		"timestamp(0)": {"timestamp(0)", 0}, "timestamp(3) with time zone": {"timestamptz(3)", 3},
		"timestamptz(6)": {"timestamptz(6)", 6}, "timestamp without time zone": {"timestamp", -1},
		"timestamp(2) without time zone": {"timestamp(2)", 2},
	} {
		lt, err := ParseLogicalType(in)
		if err != nil || lt.String() != want.canon || lt.Typmod() != want.typmod {
			t.Errorf("%q: got %q typmod %d, %v; want %q typmod %d", in, lt.String(), lt.Typmod(), err, want.canon, want.typmod)
			continue
		}
		// The canonical spelling parses to itself.
		if again, err := ParseLogicalType(lt.String()); err != nil || again != lt {
			t.Errorf("%q: canonical %q parses to %+v, %v", in, lt.String(), again, err)
		}
	}
	for _, bad := range []string{"int4(3)", "varchar(0)", "varchar(3,1)", "numeric(0)", "numeric(3,4)", "numeric(1001)", "timestamp(7)", "bpchar", "text with time zone", "blob", "varchar(", "date(1)"} {
		if lt, err := ParseLogicalType(bad); err == nil {
			t.Errorf("%q accepted as %+v", bad, lt)
		}
	}
}

func TestMaxConnections(t *testing.T) {
	c, err := Parse([]byte(minimal), "p.yaml")
	if err != nil || c.Limits.MaxConnections != 0 {
		t.Fatalf("default: %v; want 0 (no cap)", err)
	}
	c, err = Parse([]byte(minimal+"limits: {max_connections: 5}\n"), "p.yaml")
	if err != nil || c.Limits.MaxConnections != 5 {
		t.Fatalf("got %v", err)
	}
}

func TestIdleTimeouts(t *testing.T) {
	c, err := Parse([]byte(minimal), "p.yaml")
	if err != nil || c.Limits.IdleSessionTimeout != 0 || c.Limits.IdleInTransactionTimeout != 0 {
		t.Fatalf("default: %v, %+v; want both off", err, c.Limits)
	}
	c, err = Parse([]byte(minimal+"limits: {idle_session_timeout: 10min, idle_in_transaction_timeout: \"1m30s\"}\n"), "p.yaml")
	if err != nil || c.Limits.IdleSessionTimeout != 10*time.Minute || c.Limits.IdleInTransactionTimeout != 90*time.Second {
		t.Fatalf("got %v, %+v", err, c.Limits)
	}
	for in, want := range map[string]time.Duration{
		"0": 0, "30s": 30 * time.Second, "30 s": 30 * time.Second, "500ms": 500 * time.Millisecond,
		"2h": 2 * time.Hour, "1d": 24 * time.Hour, "10m": 10 * time.Minute, "1.5s": 1500 * time.Millisecond,
		"0s": 0, "2147483647ms": 2147483647 * time.Millisecond,
	} {
		if got, err := ParseTimeout(in); err != nil || got != want {
			t.Errorf("%q: got %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "10", "-1s", "10 minutes", "1x", "100us", "2147483648ms", "25d", "99999999999999999999h"} {
		if got, err := ParseTimeout(bad); err == nil {
			t.Errorf("%q accepted as %v", bad, got)
		}
	}
}

func TestAdmin(t *testing.T) {
	c, err := Parse([]byte(minimal), "/etc/px/p.yaml")
	if err != nil || c.Admin != nil {
		t.Fatalf("no admin section: %v, %+v; want no admin listener", err, c.Admin)
	}
	c, err = Parse([]byte(minimal+"admin: {token_file: admin.token}\n"), "/etc/px/p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.Listen != DefaultAdminListen || c.Admin.TokenFile != "/etc/px/admin.token" || c.Admin.Cert != "" {
		t.Errorf("defaults: got %+v; want loopback, the token beside the config, no TLS", c.Admin)
	}
	c, err = Parse([]byte(minimal+"admin: {listen: \"0.0.0.0:9187\", token_file: /t, cert: a.crt, key: a.key, catalog_max_age: 5m}\n"), "/etc/px/p.yaml")
	if err != nil || c.Admin.Listen != "0.0.0.0:9187" || c.Admin.Cert != "/etc/px/a.crt" || c.Admin.Key != "/etc/px/a.key" || c.Admin.CatalogMaxAge != 5*time.Minute {
		t.Errorf("got %v, %+v", err, c.Admin)
	}
	for doc, want := range map[string]string{
		"admin: {listen: 127.0.0.1:9187}\n":                   "token_file",
		"admin: {token_file: t, cert: a.crt}\n":               "admin.cert and admin.key",
		"admin: {listen: nowhere, token_file: t}\n":           "not host:port",
		"admin: {token_file: t, lockdown: true}\n":            "lockdown",
		"admin: {token_file: t, catalog_max_age: soon}\n":     "catalog_max_age",
		"admin: {listen: 127.0.0.1:9187, token_file: \"\"}\n": "token_file",
	} {
		if _, err := Parse([]byte(minimal+doc), "p.yaml"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v; want an error naming %s", doc, err, want)
		}
	}
}

func TestEnforceDefaultsToOn(t *testing.T) {
	doc := minimal + `phi:
  public.patients:
    ssn: {type: text, mode: deterministic, enforce: observe}
    dob: {type: date, mode: randomized}
    mrn: {type: text, mode: randomized, enforce: on}
`
	c, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"ssn": EnforceObserve, "dob": EnforceOn, "mrn": EnforceOn} {
		col, _ := c.Column("public", "patients", name)
		if col.Enforce != want || col.Observed() != (want == EnforceObserve) {
			t.Errorf("%s: enforce %q, want %q", name, col.Enforce, want)
		}
	}
}
