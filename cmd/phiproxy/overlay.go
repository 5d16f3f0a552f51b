package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// runOverlay is `phiproxy overlay install|status`: the catalog overlay
// through which introspection sees PHI columns with their logical types
// (docs/sql-support.md, "Catalog introspection").
func runOverlay(ctx context.Context, env *cmdEnv, args []string) error {
	usage := func() {
		fmt.Fprintln(env.stderr, "usage: phiproxy overlay install|status --config FILE [--dsn DSN]\n\n"+
			"  install  create or update the catalog overlay (schema "+config.OverlaySchema+") for the config\n"+
			"           and the event triggers that announce DDL to every proxy (needs a superuser)\n"+
			"  status   report whether the overlay is current; exit 1 when it is not")
	}
	if len(args) == 0 || (args[0] != "install" && args[0] != "status") {
		usage()
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return usagef("overlay: want install or status")
	}
	action := args[0]
	var cfgPath, dsn string
	fs := pflag.NewFlagSet("overlay "+action, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.StringVar(&cfgPath, "config", "", "config file (YAML), required")
	fs.StringVar(&dsn, "dsn", "", "connect with this DSN instead of catalog_dsn (a role that may create the schema)")
	fs.Usage = func() { usage(); fs.PrintDefaults() }
	cfg, err := parseConfigFlags(fs, args[1:], "overlay "+action, &cfgPath)
	if cfg == nil {
		return err // nil after --help
	}
	st, err := phi.Overlay(ctx, cfg, dsn, action == "install")
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
