package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/observe"
)

// observeCmd holds the parsed flags of `phiproxy observe`.
type observeCmd struct {
	cfgPath, format, file string
	cfg                   *config.Config
}

func observeCommand() *actions[observeCmd] {
	return &actions[observeCmd]{
		name:  "observe",
		head:  "usage: phiproxy observe report --config FILE [--format table|json|csv|html]",
		notes: "Exit 0: nothing observed would be refused; 1: something would; 2: usage or config error.\nSee docs/observe.md.",
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
}

// runObserve is `phiproxy observe report --config FILE [--format
// table|json|csv|html]` (docs/observe.md): the coverage records of the
// columns in enforce: observe, from state_dir. Exit 1 when any observed
// statement would be refused, so an application's CI can gate on it.
func runObserve(ctx context.Context, env *cmdEnv, args []string) error {
	c := &observeCmd{}
	return observeCommand().runConfigured(ctx, env, args, c, &c.cfgPath, &c.cfg)
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
	file := c.file
	if file == "" {
		file = filepath.Join(c.cfg.StateDir, observe.FileName)
	}
	f, err := observe.ReadFile(file)
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
