package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/audit"
	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// headFileName is the writer's head file in state_dir.
const headFileName = "audit-head.json"

// auditAction is one `phiproxy audit` action.
type auditAction = action[auditCmd]

// auditCmd holds the parsed flags of every action.
type auditCmd struct {
	cfgPath, dir, publicKey, headPath, statePath string

	format, output string
	n              int
	follow         bool
	noCompletions  bool

	since, until                                 string
	dbUsers, endUsers, roles, relations, columns []string
	actions, decisions, clients, sessions        []string
	now                                          func() time.Time
	poll, settle                                 time.Duration
	cfg                                          *config.Config
	filter                                       audit.Filter
}

func auditCommand() *actions[auditCmd] {
	return &actions[auditCmd]{
		name:     "audit",
		head:     "usage: phiproxy audit <action> (--config FILE | --dir DIR [--public-key FILE]) [flags]",
		notes:    "Without the keyset: --dir DIR --public-key FILE (from `phiproxy keys export-public`).\nSee docs/audit.md.",
		synopsis: "(--config FILE | --dir DIR)",
		flags: func(fs *pflag.FlagSet, a *auditCmd) {
			fs.StringVar(&a.cfgPath, "config", "", "config file: audit.file.dir, state_dir and the keyset")
			fs.StringVar(&a.dir, "dir", "", "the trail's directory (instead of, or overriding, the config's audit.file.dir)")
			fs.StringVar(&a.publicKey, "public-key", "", "public audit-signing keyset from `phiproxy keys export-public` (verify)")
		},
		actions: auditActions(),
	}
}

func auditActions() map[string]auditAction {
	filters := func(fs *pflag.FlagSet, a *auditCmd) {
		fs.StringVar(&a.since, "since", "", "events at or after: RFC 3339 time, a date (UTC), or how long ago (168h, 7d)")
		fs.StringVar(&a.until, "until", "", "events before: same forms as --since")
		fs.StringSliceVar(&a.dbUsers, "db-user", nil, "PostgreSQL user (repeat or comma-separate for any of several)")
		fs.StringSliceVar(&a.endUsers, "end-user", nil, "end user (sqlcommenter tag or SET phiproxy.end_user)")
		fs.StringSliceVar(&a.roles, "role", nil, "role: a role membership, or the current role after SET ROLE")
		fs.StringSliceVar(&a.relations, "relation", nil, "relation: schema.table or table")
		fs.StringSliceVar(&a.columns, "column", nil, "column: schema.table.column, table.column or column")
		fs.StringSliceVar(&a.actions, "action", nil, "read, write, delete, copy_in, copy_out, denied, start, stop, checkpoint, ...")
		fs.StringSliceVar(&a.decisions, "decision", nil, "allowed, masked or denied")
		fs.StringSliceVar(&a.clients, "client", nil, "client address: CIDR (10.0.0.0/8) or IP")
		fs.StringSliceVar(&a.sessions, "session", nil, "session id, or a prefix of it")
		fs.BoolVar(&a.noCompletions, "no-completions", false, "do not add the completion records of selected events")
	}
	// selecting is an action on the events that match the filters: the
	// filter flags, then its own.
	selecting := func(summary, usage string, run func(context.Context, *cmdEnv, *auditCmd) error, flags func(*pflag.FlagSet, *auditCmd)) auditAction {
		return auditAction{summary: summary, usage: usage, run: run, flags: func(fs *pflag.FlagSet, a *auditCmd) {
			filters(fs, a)
			flags(fs, a)
		}}
	}
	return map[string]auditAction{
		"verify": {
			summary: "check the hash chain, the checkpoint signatures and that nothing is missing; exit 1 if tampered",
			usage:   "[--public-key FILE] [--head FILE] [--state FILE]",
			flags: func(fs *pflag.FlagSet, a *auditCmd) {
				fs.StringVar(&a.headPath, "head", "", "the writer's head file (default with --config: state_dir/"+headFileName+")")
				fs.StringVar(&a.statePath, "state", "", "remember the last verified checkpoint here; fail if a later trail no longer holds it")
			},
			run: auditVerify,
		},
		"search": selecting("print the events that match filters", "[filters] [--format table|json|csv]", auditSearch,
			func(fs *pflag.FlagSet, a *auditCmd) {
				fs.StringVar(&a.format, "format", "", "table (default on a terminal), json (the event lines as written; default otherwise) or csv")
			}),
		"export": selecting("write the events that match filters as JSON lines or CSV", "[filters] [--format jsonl|csv] [--output FILE]", auditExport,
			func(fs *pflag.FlagSet, a *auditCmd) {
				fs.StringVar(&a.format, "format", "jsonl", "jsonl (the event lines as written) or csv")
				fs.StringVar(&a.output, "output", "", "write to FILE (mode 0600) instead of standard output")
			}),
		"tail": selecting("print the last events; -f follows new ones until interrupted", "[-n N] [-f] [filters] [--format table|json|csv]", auditTail,
			func(fs *pflag.FlagSet, a *auditCmd) {
				fs.IntVarP(&a.n, "lines", "n", 10, "how many events")
				fs.BoolVarP(&a.follow, "follow", "f", false, "keep printing new events (and new files) until interrupted")
				fs.StringVar(&a.format, "format", "", "table (default on a terminal), json or csv")
			}),
	}
}

// runAudit dispatches `phiproxy audit ACTION`.
func runAudit(ctx context.Context, env *cmdEnv, args []string) error {
	return runAuditWith(ctx, env, args, &auditCmd{now: time.Now, poll: 200 * time.Millisecond, settle: 500 * time.Millisecond})
}

func runAuditWith(ctx context.Context, env *cmdEnv, args []string, a *auditCmd) error {
	act, fs, err := auditCommand().pick(env, args, a)
	if act == nil {
		return err // nil after --help
	}
	name := args[0]
	if ok, err := parseFlags(fs, args[1:], "audit "+name); !ok {
		return err
	}
	if a.cfgPath == "" && a.dir == "" {
		return usagef("audit %s: give --config FILE or --dir DIR", name)
	}
	if a.cfgPath != "" {
		cfg, err := config.Load(a.cfgPath)
		if err != nil {
			return usageError{err}
		}
		a.cfg = cfg
		if a.dir == "" {
			a.dir = cfg.Audit.File.Dir
		}
	}
	if fi, err := os.Stat(a.dir); err != nil || !fi.IsDir() {
		return usagef("audit %s: no audit trail directory %s", name, a.dir)
	}
	if err := a.parseFilter(); err != nil {
		return err
	}
	return act.run(ctx, env, a)
}

func (a *auditCmd) segments() ([]audit.Segment, error) {
	segs, err := audit.Segments(a.dir)
	if err != nil {
		return nil, usageError{err}
	}
	return segs, nil
}

// parseFilter turns the filter flags into a.filter.
func (a *auditCmd) parseFilter() error {
	f := audit.Filter{DBUsers: a.dbUsers, EndUsers: a.endUsers, Roles: a.roles, Relations: a.relations,
		Columns: a.columns, Actions: a.actions, Decisions: a.decisions, Sessions: a.sessions, Completions: !a.noCompletions}
	var err error
	if f.Since, err = parseWhen(a.since, a.now()); err != nil {
		return usagef("--since: %v", err)
	}
	if f.Until, err = parseWhen(a.until, a.now()); err != nil {
		return usagef("--until: %v", err)
	}
	for _, c := range a.clients {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			addr, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return usagef("--client %q is neither a CIDR nor an IP address", c)
			}
			p = netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen())
		}
		f.Clients = append(f.Clients, p.Masked())
	}
	a.filter = f
	return nil
}

// parseWhen reads an RFC 3339 time, a date (midnight UTC), or a duration
// ago (Go syntax, plus N d for days).
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseUint(days, 10, 16); err == nil {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2026-11-24T12:00:00Z), a date (2026-11-24) or a duration ago (168h, 7d)", s)
}

// verifier returns the checkpoint signature verifier: --public-key, else
// the config's keyset.
func (a *auditCmd) verifier(ctx context.Context) (audit.SignatureVerifier, error) {
	if a.publicKey != "" {
		b, err := os.ReadFile(a.publicKey)
		if err != nil {
			return nil, usageError{err}
		}
		v, err := crypto.NewVerifier(b)
		if err != nil {
			return nil, usagef("--public-key %s: %v", a.publicKey, err)
		}
		return v, nil
	}
	if a.cfg == nil {
		return nil, usagef("audit verify: give --public-key FILE (from `phiproxy keys export-public`) or --config FILE to check checkpoint signatures")
	}
	st, err := crypto.OpenStore(ctx, a.cfg.Keys, crypto.Options{Env: crypto.EnvFromOS()})
	if err != nil {
		return nil, usageError{err}
	}
	pub, err := st.ExportPublic()
	if err != nil {
		return nil, usageError{err}
	}
	v, err := crypto.NewVerifier(pub)
	if err != nil {
		return nil, usageError{err}
	}
	return v, nil
}

// head returns the head file to check: --head, else state_dir's with
// --config (absent: nil, and a note saying so).
func (a *auditCmd) head() (*audit.Head, string, error) {
	path, explicit := a.headPath, a.headPath != ""
	if !explicit {
		if a.cfg == nil {
			return nil, "", nil
		}
		path = filepath.Join(a.cfg.StateDir, headFileName)
	}
	h, err := audit.ReadHead(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, fmt.Sprintf("no head file %s: lines cut off the end of the trail could go unnoticed", path), nil
	}
	if err != nil {
		return nil, "", usageError{err}
	}
	return h, "", nil
}

func auditVerify(ctx context.Context, env *cmdEnv, a *auditCmd) error {
	v, err := a.verifier(ctx)
	if err != nil {
		return err
	}
	head, headNote, err := a.head()
	if err != nil {
		return err
	}
	segs, err := a.segments()
	if err != nil {
		return err
	}
	opts := audit.VerifyOptions{Verifier: v, Head: head, StateFile: a.statePath}
	rep, err := audit.Verify(segs, opts)
	if err == nil && rep.PartialTail {
		// A running writer may be in the middle of a write: look again.
		if sleep(ctx, a.settle) == nil {
			if segs, err = a.segments(); err != nil {
				return err
			}
			rep, err = audit.Verify(segs, opts)
		}
	}
	if err != nil {
		// Reading the trail or the state file failed, or the trail is
		// intact but the state file could not be updated: not a finding.
		return usageError{err}
	}
	if !rep.OK() {
		p := rep.Problems[0]
		fmt.Fprintf(env.stdout, "TAMPERED: %s\n", p)
		for _, q := range rep.Problems[1:] {
			fmt.Fprintf(env.stdout, "  also: %s\n", q)
		}
		if rep.Truncated {
			fmt.Fprintln(env.stdout, "  (more problems follow; fix or set aside the first one to see them)")
		}
		where := "the trail"
		if p.File != "" {
			where = p.File
		}
		return findingsError{fmt.Errorf("audit verify: the trail in %s is not intact: first bad seq %d in %s", a.dir, p.Seq, where)}
	}
	fmt.Fprintf(env.stdout, "intact: %d events (%d checkpoints) in %d files, seq %d..%d, last hash %.16s…; checkpoint signatures verified\n",
		rep.Events, rep.Checkpoints, rep.Files, rep.FirstSeq, rep.LastSeq, rep.LastHash)
	if head != nil {
		fmt.Fprintf(env.stdout, "note: the trail reaches the head file's checkpoint (seq %d)\n", head.Seq)
	}
	if headNote != "" {
		fmt.Fprintf(env.stdout, "note: %s\n", headNote)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(env.stdout, "note: %s\n", n)
	}
	if a.statePath != "" && rep.LastCheckpoint != 0 {
		fmt.Fprintf(env.stdout, "note: state %s now remembers checkpoint seq %d\n", a.statePath, rep.LastCheckpoint)
	}
	return nil
}
