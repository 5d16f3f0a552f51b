package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/proxy"
	"github.com/phiproxy/phiproxy/proxy/admin"
	"github.com/phiproxy/phiproxy/proxy/auth"
	"github.com/phiproxy/phiproxy/proxy/phi"
)

// runServe runs the proxy until ctx is cancelled (SIGINT/SIGTERM from
// main), then drains: listeners close, sessions get limits.drain_timeout to
// finish, the rest get 57P01. SIGHUP reloads the config file for new
// sessions; a config that does not load is logged and the old one kept.
func runServe(ctx context.Context, env *cmdEnv, args []string) error {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	cfgPath := fs.String("config", "", "config file (YAML), required")
	fs.Usage = func() {
		env.stderr.Write([]byte("usage: phiproxy serve --config FILE\n\n"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if *cfgPath == "" {
		return usagef("serve: --config FILE is required")
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments, got %q", fs.Args())
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return usageError{err}
	}
	log := slog.New(slog.NewJSONHandler(env.stderr, nil))
	// The PHI path: catalog snapshot checked against the phi: map, keys
	// opened under the KEK, planner. With no phi: it is a pure relay.
	// Metrics only with an admin listener: without one no Observer is
	// installed and the statement path does not pay for them.
	var metrics *admin.Metrics
	phiOpts := []phi.Option{phi.WithLogger(log), phi.WithAudit(cfg.Audit, filepath.Join(cfg.StateDir, "audit-head.json"), "phiproxy "+version)}
	warnAuditOff(log, cfg)
	// The Kafka export stops after the trail has closed (deferred first,
	// it runs last): the stop event and final checkpoint get shipped.
	var stopExport func()
	defer func() {
		if stopExport != nil {
			stopExport()
		}
	}()
	var px *phi.Proxy
	if cfg.Admin != nil {
		metrics = admin.NewMetrics(func() phi.Status { return px.Status() })
		phiOpts = append(phiOpts, phi.WithObserver(metrics))
	}
	px, err = phi.New(ctx, cfg, phiOpts...)
	var ce *pgconn.ConnectError
	switch {
	case errors.As(err, &ce):
		// PostgreSQL is down, unreachable or refused the catalog role:
		// a failure at run time (exit 1), not a usage error.
		return runtimeError{err}
	case err != nil:
		return usageError{err}
	}
	defer px.Close()
	var auditReady func() error
	if a := px.Auditor(); a != nil {
		auditReady = func() error { return a.Admit(nil, nil) }
		if metrics != nil {
			metrics.WatchAudit(a.Trail().Stats, func() bool { return a.Trail().Err() == nil })
		}
		if k := cfg.Audit.Kafka; k != nil {
			tr := a.Trail()
			exp, err := audit.NewExporter(k, cfg.Audit.File.Dir, cfg.StateDir, cfg.Audit.Instance, tr.Durable, tr.Notify(), log)
			if err != nil {
				return usageError{err}
			}
			// Past audit.kafka.max_backlog PHI is refused (58030).
			a.AddGate(exp.Admit)
			ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			done := make(chan struct{})
			go func() { defer close(done); _ = exp.Run(ectx) }()
			stopExport = func() { cancel(); <-done; _ = exp.Close() }
			if metrics != nil {
				metrics.WatchKafka(exp.Stats)
			}
		}
	}
	// Read once, whatever auth.mode says now (a reload may switch it to
	// terminate): unknown roles keep their mock salt across reloads and
	// restarts (PostgreSQL's mock_auth_nonce).
	secret, err := auth.LoadMockSecret(cfg.StateDir)
	if err != nil {
		return err
	}
	srvOpts := []proxy.Option{proxy.WithLogger(log), proxy.WithInterceptor(px.Factory()), proxy.WithMockSecret(secret)}
	if metrics != nil {
		srvOpts = append(srvOpts, proxy.WithSessionHook(metrics.SessionHook))
	}
	if a := px.Auditor(); a != nil {
		srvOpts = append(srvOpts, proxy.WithCancelHook(a.CancelRequest))
	}
	srv, err := proxy.New(cfg, srvOpts...)
	if err != nil {
		return usageError{err}
	}
	var adm *admin.Server
	if cfg.Admin != nil {
		// The admin section is read at start (SIGHUP re-reads only the
		// token file): changing it needs a restart.
		adm, err = admin.New(cfg.Admin, metrics, admin.Readiness{Upstream: cfg.Upstream.Address, Status: px.Status, CatalogMaxAge: cfg.Admin.CatalogMaxAge, Audit: auditReady, Lockdown: px}, log)
		if err != nil {
			return usageError{err}
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return runtimeError{err} // for example the address is in use
	}
	adminDone := make(chan error, 1)
	if adm != nil {
		aln, err := adm.Listen(ctx)
		if err != nil {
			ln.Close()
			return runtimeError{err}
		}
		go func() { adminDone <- adm.Serve(aln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = adm.Shutdown(sctx)
			<-adminDone
		}()
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	served := make(chan error, 1)
	// Serve's context is not ctx: a signal must drain, not cut.
	go func() { served <- srv.Serve(context.WithoutCancel(ctx), ln) }()
	for {
		select {
		case <-hup:
			next, err := config.Load(*cfgPath)
			if err == nil {
				// Keys, catalog and PHI map first: a session must never
				// start with a config whose keys are not loaded.
				err = px.Reload(ctx, next)
			}
			if err == nil {
				err = srv.Reload(next)
			}
			if err != nil {
				if metrics != nil {
					metrics.Reloaded(err)
				}
				if adm != nil {
					adm.Reloaded(err)
				}
				if a := px.Auditor(); a != nil {
					_ = a.Record(audit.ActionConfigRejected, *cfgPath+": "+err.Error())
				}
				log.Error("config reload failed; keeping the running config", "config", *cfgPath, "err", err)
				continue
			}
			if adm != nil {
				adm.Reloaded(nil)
			}
			log.Info("config reloaded", "config", *cfgPath)
			warnAuditOff(log, next)
			if next.Audit.Mode != cfg.Audit.Mode || next.Audit.File != cfg.Audit.File || (next.Audit.Kafka == nil) != (cfg.Audit.Kafka == nil) {
				log.Warn("audit settings changed: they take effect at the next restart", "running", cfg.Audit.String())
			}
			if adm != nil {
				// Token rotation; the rest of admin: needs a restart.
				if err = adm.ReloadToken(); err != nil {
					log.Error("admin token reload failed; keeping the old token", "err", err)
				}
			}
			if metrics != nil {
				metrics.Reloaded(err)
			}
		case err := <-served:
			if err == nil {
				return nil
			}
			return runtimeError{err} // Serve ended without a signal
		case err := <-adminDone:
			adminDone <- err // for the deferred Shutdown
			srv.Close()
			<-served
			return runtimeError{fmt.Errorf("admin API: %w", err)}
		case <-ctx.Done():
			if adm != nil {
				adm.Draining() // the admin API serves until sessions have drained
			}
			log.Info("stopping: draining sessions", "drain_timeout", srv.Config().Limits.DrainTimeout.String())
			sctx, cancel := context.WithTimeout(context.Background(), srv.Config().Limits.DrainTimeout+10*time.Second)
			err := srv.Shutdown(sctx)
			cancel()
			if serr := <-served; !errors.Is(serr, proxy.ErrServerClosed) && err == nil {
				err = serr
			}
			log.Info("stopped")
			return err
		}
	}
}

// warnAuditOff warns, at start and on each reload, that PHI is served
// with no audit trail (audit.mode off exists to measure the trail's cost).
func warnAuditOff(log *slog.Logger, cfg *config.Config) {
	if cfg.Audit.Mode == config.AuditOff && len(cfg.PHI) > 0 {
		log.Warn("AUDIT IS OFF: PHI is served with no audit trail (audit.mode: off is for measuring the trail's cost only; never run it with real patient data)", "config", cfg.Path)
	}
}
