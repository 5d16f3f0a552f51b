package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/observe"
)

// observeCmd holds the flags of `phiproxy observe`.
type observeCmd struct {
	cfgPath, format, file string
}

// runObserve is `phiproxy observe report --config FILE [--format
// table|json|csv|html]` (docs/observe.md): the coverage records of the
// columns in enforce: observe, from state_dir. Exit 1 when any observed
// statement would be refused, so an application's CI can gate on it.
func runObserve(ctx context.Context, env *cmdEnv, args []string) error {
	cmd := &actions[observeCmd]{
		name:     "observe",
		head:     "usage: phiproxy observe report --config FILE [--format table|json|csv|html]",
		notes:    "Exit 0: nothing observed would be refused; 1: something would; 2: usage or config error.\nSee docs/observe.md.",
		synopsis: "--config FILE",
		flags: func(fs *pflag.FlagSet, c *observeCmd) {
			fs.StringVar(&c.cfgPath, "config", "", "config file (YAML), required: the records are in its state_dir")
		},
		actions: map[string]action[observeCmd]{
			"report": {
				summary: "what enforcement would do with each statement seen on an observed column",
				usage:   "[--format table|json|csv|html] [--file PATH]",
				flags: func(fs *pflag.FlagSet, c *observeCmd) {
					fs.StringVar(&c.format, "format", "table", "output: table, json, csv or html (one self-contained page)")
					fs.StringVar(&c.file, "file", "", "read these records instead of state_dir's "+observe.FileName)
				},
				run: observeReport,
			},
		},
	}
	var c observeCmd
	a, fs, err := cmd.pick(env, args, &c)
	if err != nil || a == nil {
		return err
	}
	cfg, err := parseConfigFlags(fs, args[1:], "observe "+args[0], &c.cfgPath)
	if cfg == nil {
		return err
	}
	if c.file == "" {
		c.file = filepath.Join(cfg.StateDir, observe.FileName)
	}
	return a.run(ctx, env, &c)
}

func observeReport(_ context.Context, env *cmdEnv, c *observeCmd) error {
	var write func(*observe.Report) error
	switch c.format {
	case "table":
		write = func(r *observe.Report) error { return r.WriteTable(env.stdout) }
	case "json":
		write = func(r *observe.Report) error { return r.WriteJSON(env.stdout) }
	case "csv":
		write = func(r *observe.Report) error { return r.WriteCSV(env.stdout) }
	case "html":
		write = func(r *observe.Report) error { return r.WriteHTML(env.stdout) }
	default:
		return usagef("observe report: --format %q is not table, json, csv or html", c.format)
	}
	f, err := observe.ReadFile(c.file)
	if err != nil {
		return usageError{err}
	}
	r := observe.NewReport(f)
	if err := write(r); err != nil {
		return runtimeError{err}
	}
	if r.Refusals() {
		return findingsError{fmt.Errorf("observe: %d of %d statement shapes would be refused once enforced", r.Summary.WouldRefuse, r.Summary.Shapes)}
	}
	return nil
}
