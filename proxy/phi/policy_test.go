package phi

import (
	"bytes"
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/testenv"
	"github.com/phiproxy/phiproxy/policy"
)

// policyRoles: physicians (cardiology nests in physician), billing,
// interns and the emergency room, each with a login.
var policyRoles = []string{
	"pol_physician NOLOGIN", "pol_cardiology NOLOGIN IN ROLE pol_physician", "pol_billing NOLOGIN", "pol_intern NOLOGIN", "pol_er NOLOGIN",
	"pol_alice LOGIN PASSWORD 'pw' IN ROLE pol_cardiology", "pol_bob LOGIN PASSWORD 'pw' IN ROLE pol_billing",
	"pol_ian LOGIN PASSWORD 'pw' IN ROLE pol_intern", "pol_eve LOGIN PASSWORD 'pw' IN ROLE pol_er",
}

func setupPolicyRoles(t *testing.T, ctx context.Context) {
	super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
	for _, r := range policyRoles {
		name, _, _ := strings.Cut(r, " ")
		mustExec(t, ctx, super, "DO $$BEGIN CREATE ROLE "+r+"; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
		mustExec(t, ctx, super, "GRANT ALL ON patients, visits TO "+name)
	}
}

func mustWindow(t *testing.T, s string) policy.Window {
	w, err := policy.ParseWindow(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// policyCfg is the test config with the four roles' policy on
// public.patients (as DESIGN §7's example).
func policyCfg(t *testing.T) (*config.Config, string) {
	cfg, dir := auditCfg(t, config.AuditStrict)
	cfg.StateDir = dir + "/state"
	clinic, _ := policy.ParsePrefix("10.0.0.0/8")
	day := mustWindow(t, "Mon-Fri 08:00-18:00 America/New_York")
	pols := map[string]policy.Column{
		"ssn": {
			Read: []policy.Rule{
				{Index: 1, Roles: []string{"pol_physician"}, Access: policy.Plaintext, When: []policy.Window{day}},
				{Index: 2, Roles: []string{"pol_billing"}, Access: policy.Plaintext, From: []netip.Prefix{clinic}},
				{Index: 3, Roles: []string{"pol_billing", "pol_physician"}, Access: policy.MaskLast4},
			},
			Write:      []policy.Rule{{Index: 1, Roles: []string{"pol_physician", "app"}, Allow: true}},
			Default:    policy.Deny,
			BreakGlass: &policy.BreakGlass{Roles: []string{"pol_er"}, TTL: time.Hour},
		},
		"dob":       {Read: []policy.Rule{{Index: 1, Roles: []string{"pol_physician"}, Access: policy.Plaintext}, {Index: 2, Roles: []string{"pol_billing"}, Access: policy.MaskYear}}, Default: policy.Deny},
		"diagnosis": {Read: []policy.Rule{{Index: 1, Roles: []string{"pol_physician"}, Access: policy.Plaintext}}, Default: policy.Deny},
	}
	phi := map[string]map[string]config.Column{}
	for rel, cols := range cfg.PHI {
		phi[rel] = map[string]config.Column{}
		for name, col := range cols {
			if p, ok := pols[name]; ok && rel == "public.patients" {
				col.Policy = p
			}
			phi[rel][name] = col
		}
	}
	cfg.PHI = phi
	return cfg, dir
}

// The same queries, as physician, billing, intern and ER doctor, in both
// protocols: plaintext, masked or 42501 as the rules say, with windows,
// networks, nested roles, write rules, predicates and break-glass; and
// every decision in the audit trail with the rule that made it.
func TestPolicyDecidesPerRole(t *testing.T) {
	ctx := testCtx(t)
	setupPolicyRoles(t, ctx)
	cfg, dir := policyCfg(t)
	var now atomic.Int64
	monday10 := time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC) // 10:00 in New York
	now.Store(monday10.UnixNano())
	p := startAudited(t, cfg, dir, WithClock(func() time.Time { return time.Unix(0, now.Load()) }))
	seed := connect(t, ctx, p.dsn(), pgx.QueryExecModeCacheStatement)
	mustExec(t, ctx, seed, "INSERT INTO patients (id, ssn, dob, diagnosis) VALUES (1, '123-45-6789', '1980-06-15', 'flu')")

	as := func(user string, mode pgx.QueryExecMode) *pgx.Conn {
		return connect(t, ctx, strings.Replace(testenv.AppDSN(p.addr), testenv.AppUser+":"+testenv.AppPassword, user+":pw", 1), mode)
	}
	read := func(c *pgx.Conn, sql string, args ...any) (string, string) {
		t.Helper()
		var v any
		err := c.QueryRow(ctx, sql, args...).Scan(&v)
		if d, ok := v.(time.Time); ok {
			return d.Format("2006-01-02"), sqlstate(err)
		}
		s, _ := v.(string)
		if n, ok := v.(int32); ok {
			s = strconv.Itoa(int(n))
		}
		return s, sqlstate(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		alice, bob, ian := as("pol_alice", mode), as("pol_bob", mode), as("pol_ian", mode)
		now.Store(monday10.UnixNano())
		for _, c := range []struct {
			who        string
			conn       *pgx.Conn
			sql        string
			want, code string
		}{
			{"physician (nested role), in hours", alice, "SELECT ssn FROM patients WHERE id = 1", "123-45-6789", ""},
			{"physician's dob", alice, "SELECT dob FROM patients WHERE id = 1", "1980-06-15", ""},
			{"physician filters on ssn", alice, "SELECT id FROM patients WHERE ssn = '123-45-6789'", "1", ""},
			{"billing outside 10.0.0.0/8: masked", bob, "SELECT ssn FROM patients WHERE id = 1", "***-**-6789", ""},
			{"billing's dob: the year", bob, "SELECT dob FROM patients WHERE id = 1", "1980-01-01", ""},
			{"billing may not probe ssn", bob, "SELECT id::text FROM patients WHERE ssn = '123-45-6789'", "", "42501"},
			{"billing may not read diagnosis", bob, "SELECT diagnosis FROM patients WHERE id = 1", "", "42501"},
			{"intern: default deny", ian, "SELECT ssn FROM patients WHERE id = 1", "", "42501"},
			{"intern: no PHI column is fine", ian, "SELECT id FROM patients WHERE id = 1", "1", ""},
		} {
			got, code := read(c.conn, c.sql)
			if code != c.code || (c.code == "" && got != c.want) {
				t.Errorf("%s %s: got %q %s, want %q %s", mode, c.who, got, code, c.want, c.code)
			}
		}
		// The window closes: the physician falls to the next rule.
		now.Store(monday10.Add(10 * time.Hour).UnixNano())
		if got, code := read(alice, "SELECT ssn FROM patients WHERE id = 1"); got != "***-**-6789" || code != "" {
			t.Errorf("%s physician after hours: %q %s", mode, got, code)
		}
		if _, code := read(alice, "SELECT id::text FROM patients WHERE ssn = $1", "123-45-6789"); code != "42501" {
			t.Errorf("%s physician after hours probing ssn: %s", mode, code)
		}
		// Write rules: physicians may write ssn, billing may not.
		if _, err := alice.Exec(ctx, "UPDATE patients SET ssn = '123-45-6789' WHERE id = 1"); err != nil {
			t.Errorf("%s physician write: %v", mode, err)
		}
		if _, err := bob.Exec(ctx, "UPDATE patients SET ssn = '000-00-0000' WHERE id = 1"); sqlstate(err) != "42501" {
			t.Errorf("%s billing write: %v", mode, err)
		}
	}
	// A REVOKE applies from the session's next statement after a reload.
	{
		bob := as("pol_bob", pgx.QueryExecModeCacheStatement)
		super := connect(t, ctx, testCfg.CatalogDSN, pgx.QueryExecModeExec)
		mustExec(t, ctx, super, "REVOKE pol_billing FROM pol_bob")
		defer mustExec(t, context.Background(), super, "GRANT pol_billing TO pol_bob")
		if got, _ := read(bob, "SELECT ssn FROM patients WHERE id = 1"); got != "***-**-6789" {
			t.Fatalf("billing before the reload: %q", got)
		}
		if err := p.phi.Reload(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, code := read(bob, "SELECT ssn FROM patients WHERE id = 1"); code != "42501" {
			t.Fatalf("billing revoked, after the reload: %s", code)
		}
		mustExec(t, ctx, super, "GRANT pol_billing TO pol_bob")
		if err := p.phi.Reload(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// COPY TO as billing: masked.
	bob := as("pol_bob", pgx.QueryExecModeSimpleProtocol)
	var buf bytes.Buffer
	if _, err := bob.PgConn().CopyTo(ctx, &buf, "COPY patients (id, ssn, dob) TO STDOUT"); err != nil || buf.String() != "1\t***-**-6789\t1980-01-01\n" {
		t.Errorf("COPY TO as billing: %q %v", buf.String(), err)
	}

	// Break-glass.
	now.Store(monday10.UnixNano())
	eve := as("pol_eve", pgx.QueryExecModeCacheStatement)
	if _, code := read(eve, "SELECT ssn FROM patients WHERE id = 1"); code != "42501" {
		t.Fatalf("ER without break-glass: %s", code)
	}
	if _, err := eve.Exec(ctx, "SET phiproxy.break_glass = 'urgent'"); sqlstate(err) != "22023" {
		t.Fatalf("break-glass with a short reason: %v", err)
	}
	mustExec(t, ctx, eve, "SET phiproxy.break_glass = 'patient unconscious in ER bay 3'")
	if got, code := read(eve, "SELECT ssn FROM patients WHERE id = 1"); got != "123-45-6789" || code != "" {
		t.Fatalf("ER with break-glass: %q %s", got, code)
	}
	// Lockdown overrides break-glass.
	if err := p.phi.SetLockdown(ctx, true, "drill during break-glass", "test"); err != nil {
		t.Fatal(err)
	}
	_, code := read(eve, "SELECT ssn FROM patients WHERE id = 1")
	if err := p.phi.SetLockdown(ctx, false, "drill over", "test"); err != nil {
		t.Fatal(err)
	}
	if code != "42501" {
		t.Fatalf("break-glass under lockdown: %s", code)
	}
	now.Store(monday10.Add(61 * time.Minute).UnixNano())
	if _, code := read(eve, "SELECT ssn FROM patients WHERE id = 1"); code != "42501" {
		t.Fatalf("break-glass after its TTL: %s", code)
	}

	p.phi.Close()
	var masked, allowed, glass, denied bool
	for _, e := range statementEvents(trailEvents(t, cfg.Audit.File.Dir)) {
		switch {
		case e.Decision == audit.DecisionMasked && strings.Contains(e.Reason, "read rule 3 (roles pol_billing, pol_physician)"):
			masked = true
		case e.Decision == audit.DecisionAllowed && e.BreakGlass && strings.Contains(e.Reason, "break-glass: patient unconscious in ER bay 3"):
			glass = true
		case e.Decision == audit.DecisionAllowed && strings.Contains(e.Reason, "read rule 1 (roles pol_physician)"):
			allowed = true
		case e.Decision == audit.DecisionDenied && strings.Contains(e.Reason, "permission denied for column public.patients.ssn: default denies"):
			denied = true
		}
	}
	if !masked || !allowed || !glass || !denied {
		t.Fatalf("audit decisions: masked %v allowed %v break-glass %v denied %v", masked, allowed, glass, denied)
	}
	scanForCanary(t, dir, "123-45-6789")
}
