package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// overlayCmd holds the parsed flags of `phiproxy overlay`.
type overlayCmd struct {
	cfgPath, dsn string
	cfg          *config.Config
}

func overlayCommand() *actions[overlayCmd] {
	return &actions[overlayCmd]{
		name:  "overlay",
		head:  "usage: phiproxy overlay install|status --config FILE [--dsn DSN]",
		notes: "See docs/sql-support.md, \"Catalog introspection\".",
		flags: func(fs *pflag.FlagSet, o *overlayCmd) {
			fs.StringVar(&o.dsn, "dsn", "", "connect with this DSN instead of catalog_dsn (a role that may create the schema)")
		},
		actions: map[string]action[overlayCmd]{
			"install": {
				summary: "create or update the catalog overlay (schema " + config.OverlaySchema + ") for the config\n" +
					"           and the event triggers that announce DDL to every proxy (needs a superuser)",
				usage: "[--dsn DSN]",
				run:   func(ctx context.Context, env *cmdEnv, o *overlayCmd) error { return o.run(ctx, env, true) },
			},
			"status": {
				summary: "report whether the overlay is current; exit 1 when it is not",
				usage:   "[--dsn DSN]",
				run:     func(ctx context.Context, env *cmdEnv, o *overlayCmd) error { return o.run(ctx, env, false) },
			},
		},
	}
}

// runOverlay is `phiproxy overlay install|status`: the catalog overlay
// through which introspection sees PHI columns with their logical types
// (docs/sql-support.md, "Catalog introspection").
func runOverlay(ctx context.Context, env *cmdEnv, args []string) error {
	o := &overlayCmd{}
	return overlayCommand().runConfigured(ctx, env, args, o, &o.cfgPath, &o.cfg)
}

// run reports the overlay's state, after installing it with install.
func (o *overlayCmd) run(ctx context.Context, env *cmdEnv, install bool) error {
	st, err := phi.Overlay(ctx, o.cfg, o.dsn, install)
	if err != nil {
		return err
	}
	if st.Trigger {
		fmt.Fprintln(env.stdout, "catalog event triggers installed: DDL reaches every proxy at once")
	} else {
		fmt.Fprintln(env.stdout, "catalog event triggers missing: DDL from elsewhere reaches the proxies at catalog.refresh_interval (phiproxy overlay install as a superuser adds them)")
	}
	switch {
	case st.Current:
		fmt.Fprintf(env.stdout, "catalog overlay current: %d PHI columns\n", len(st.Want))
		return nil
	case st.Installed:
		return findingsError{fmt.Errorf("catalog overlay stale: it lists %d PHI columns, the config and catalog %d (run phiproxy overlay install)", len(st.Have), len(st.Want))}
	}
	return findingsError{errors.New("catalog overlay missing or from another phiproxy or server version (run phiproxy overlay install)")}
}
