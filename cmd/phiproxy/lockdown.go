package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/user"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/certpool"
	"github.com/phiproxy/phiproxy/policy"
	"github.com/phiproxy/phiproxy/proxy/admin"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// lockdownCmd holds the parsed flags of `phiproxy lockdown`.
type lockdownCmd struct {
	cfgPath, reason string
	cfg             *config.Config
}

func lockdownCommand() *actions[lockdownCmd] {
	reason := func(fs *pflag.FlagSet, l *lockdownCmd) {
		fs.StringVar(&l.reason, "reason", "", "why (recorded in the audit trail), required")
	}
	to := func(action string) func(context.Context, *cmdEnv, *lockdownCmd) error {
		return func(ctx context.Context, env *cmdEnv, l *lockdownCmd) error { return l.run(ctx, env, action) }
	}
	return &actions[lockdownCmd]{
		name:  "lockdown",
		head:  "usage: phiproxy lockdown on|off|status --config FILE [--reason TEXT]",
		notes: "See docs/operations.md.",
		actions: map[string]action[lockdownCmd]{
			"on": {
				summary: "serve no plaintext PHI on every instance sharing the database (--reason required)",
				usage:   "--reason TEXT", flags: reason, run: to("on"),
			},
			"off": {
				summary: "serve PHI again (--reason required)",
				usage:   "--reason TEXT", flags: reason, run: to("off"),
			},
			"status": {
				summary: "print the switch as the instance sees it (state_dir and the database)",
				run:     to("status"),
			},
		},
	}
}

// runLockdown is `phiproxy lockdown on|off|status --config FILE
// [--reason TEXT]` (DESIGN §7). With an admin: section it asks the
// instance of the config through its admin API, which switches itself,
// state_dir and the database (every instance sharing it follows within
// a second, through NOTIFY). Without one, it writes the database's
// switch and state_dir itself, and audits the switch when no proxy holds
// the trail (running proxies record what they see).
func runLockdown(ctx context.Context, env *cmdEnv, args []string) error {
	l := &lockdownCmd{}
	return lockdownCommand().runConfigured(ctx, env, args, l, &l.cfgPath, &l.cfg)
}

func (l *lockdownCmd) run(ctx context.Context, env *cmdEnv, action string) error {
	cfg, reason := l.cfg, l.reason
	if action != "status" {
		if err := policy.CheckReason(reason); err != nil {
			return usageError{err}
		}
	}
	var (
		st  phi.LockdownStatus
		err error
	)
	if cfg.Admin != nil {
		st, err = lockdownViaAdmin(ctx, cfg, action, reason)
	} else {
		st, err = lockdownDirect(ctx, env, cfg, action, reason)
	}
	if err != nil {
		return runtimeError{err}
	}
	printLockdown(env.stdout, st)
	return nil
}

// operator names who runs the command.
func operator() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

// lockdownViaAdmin asks the config's instance through its admin API.
func lockdownViaAdmin(ctx context.Context, cfg *config.Config, action, reason string) (phi.LockdownStatus, error) {
	var st phi.LockdownStatus
	tok, err := admin.ReadToken(cfg.Admin.TokenFile)
	if err != nil {
		return st, err
	}
	client := &http.Client{Timeout: 30 * time.Second}
	scheme := "http"
	if cfg.Admin.Cert != "" {
		// The admin certificate is its own trust anchor here.
		roots, err := certpool.Load(cfg.Admin.Cert)
		if err != nil {
			return st, fmt.Errorf("admin.cert: %w", err)
		}
		host, _, _ := net.SplitHostPort(cfg.Admin.Listen)
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}}
		scheme = "https"
	}
	url := scheme + "://" + cfg.Admin.Listen + "/lockdown"
	method, body := http.MethodGet, []byte(nil)
	if action != "status" {
		method = http.MethodPost
		body, _ = json.Marshal(admin.LockdownRequest{On: action == "on", Reason: reason, By: operator()})
	}
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return st, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("admin API at %s: %w (is phiproxy serve running?)", cfg.Admin.Listen, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return st, json.Unmarshal(b, &st)
}

// lockdownDirect reads or writes the switch in state_dir and the database.
func lockdownDirect(ctx context.Context, env *cmdEnv, cfg *config.Config, action, reason string) (phi.LockdownStatus, error) {
	var st phi.LockdownStatus
	pc, err := pgxpool.ParseConfig(cfg.CatalogDSN)
	if err != nil {
		return st, err
	}
	conn, err := pgx.ConnectConfig(ctx, pc.ConnConfig)
	if err != nil {
		return st, fmt.Errorf("catalog_dsn: %w", err)
	}
	defer conn.Close(context.Background())
	if action != "status" {
		l := policy.Lockdown{On: action == "on", Reason: reason, By: operator() + " (phiproxy lockdown)", Since: time.Now().UTC()}
		if err := phi.WriteLockdownDB(ctx, conn, l); err != nil {
			return st, err
		}
		if err := phi.WriteLockdownFile(cfg.StateDir, l); err != nil {
			return st, err
		}
		if err := recordAudit(ctx, env, cfg, audit.ActionLockdown, l.Describe("cli")); err != nil {
			return st, err
		}
	}
	if st.File, err = phi.ReadLockdownFile(cfg.StateDir); err != nil {
		return st, err
	}
	if st.Database, err = phi.ReadLockdownDB(ctx, conn); err != nil {
		return st, err
	}
	st.Locked = st.File.On || st.Database.On
	return st, nil
}

func printLockdown(w io.Writer, st phi.LockdownStatus) {
	state := "OFF: PHI is served"
	if st.Locked {
		state = "ON: no plaintext PHI is served"
	}
	fmt.Fprintf(w, "lockdown %s\n", state)
	for _, s := range []struct {
		where string
		l     policy.Lockdown
	}{{"state_dir", st.File}, {"database", st.Database}} {
		if s.l.Since.IsZero() {
			fmt.Fprintf(w, "  %-9s  never switched\n", s.where)
			continue
		}
		on := "off"
		if s.l.On {
			on = "on"
		}
		fmt.Fprintf(w, "  %-9s  %-3s since %s by %s: %s\n", s.where, on, s.l.Since.Format(time.RFC3339), s.l.By, s.l.Reason)
	}
}
