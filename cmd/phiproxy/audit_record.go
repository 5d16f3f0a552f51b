package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// recordAudit writes one of the trail's own events (a key rotated or
// retired by the CLI) when no proxy holds the trail; a running proxy
// records the change itself when SIGHUP makes it load the keys. It says
// on stdout which of the two happened.
func recordAudit(ctx context.Context, env *cmdEnv, cfg *config.Config, action, detail string) error {
	return recordAuditEvent(ctx, env, cfg, &audit.Event{Action: action, Detail: detail})
}

// recordAuditEvent is recordAudit for an event with more than an action
// and a detail (the relations and columns encrypt changed).
func recordAuditEvent(ctx context.Context, env *cmdEnv, cfg *config.Config, ev *audit.Event) error {
	action := ev.Action
	if cfg.Audit.Mode == config.AuditOff || len(cfg.PHI) == 0 {
		return nil
	}
	keys, err := crypto.Open(ctx, cfg, crypto.Options{Env: crypto.EnvFromOS()})
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	signer, err := keys.Signer()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	t, err := audit.Open(audit.Options{
		Dir: cfg.Audit.File.Dir, Instance: cfg.Audit.Instance, Mode: audit.ModeStrict,
		CheckpointEvery: cfg.Audit.File.CheckpointEvery, MaxFileBytes: cfg.Audit.File.MaxFileBytes,
		Signer: signer, HeadFile: filepath.Join(cfg.StateDir, "audit-head.json"), Version: "phiproxy " + version + " (cli)",
	})
	if errors.Is(err, audit.ErrLocked) {
		fmt.Fprintln(env.stdout, "audit: a running phiproxy holds the trail; it records the change itself when it sees it (a key rotation at its next SIGHUP)")
		return nil
	}
	if err != nil {
		return err
	}
	r, err := t.Record(ctx, ev, true)
	if err == nil {
		err = r.Wait(ctx)
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	fmt.Fprintf(env.stdout, "audit: %s recorded in %s\n", action, cfg.Audit.File.Dir)
	return nil
}
