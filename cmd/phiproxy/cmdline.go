package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
)

// pick returns the entry of m that args[0] names. Without an argument it
// prints usage and fails ("missing"); after -h, --help or help it prints
// usage and returns nil and no error; an unknown name is a usage error.
// prefix and noun name what is picked in the messages.
func pick[T any](env *cmdEnv, args []string, m map[string]T, usage func(io.Writer, map[string]T), prefix, noun string) (*T, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout, m)
		if len(args) == 0 {
			return nil, usagef("%smissing %s", prefix, noun)
		}
		return nil, nil
	}
	v, ok := m[args[0]]
	if !ok {
		usage(env.stderr, m)
		return nil, usagef("%sunknown %s %q", prefix, noun, args[0])
	}
	return &v, nil
}

// action is one action of a command with actions (`phiproxy keys
// rotate`, `phiproxy audit verify`); C holds the parsed flags of every
// action of the command.
type action[C any] struct {
	summary string
	usage   string // the action's flags, after the command's own
	flags   func(fs *pflag.FlagSet, c *C)
	run     func(ctx context.Context, env *cmdEnv, c *C) error
}

// actions describes a command with actions: `phiproxy name ACTION
// [flags]`.
type actions[C any] struct {
	name     string
	head     string                        // the command's usage line
	notes    string                        // what its usage says after the list of actions
	synopsis string                        // the command's own flags, in an action's usage line (runConfigured: --config FILE)
	flags    func(fs *pflag.FlagSet, c *C) // the command's own flags (runConfigured adds --config)
	actions  map[string]action[C]
}

// pick returns the action args[0] names and its flag set (the command's
// flags, then the action's), not parsed yet. It prints the command's usage
// and returns a nil action after -h, --help or help (no error), without an
// action or with an unknown one (a usage error).
func (cmd *actions[C]) pick(env *cmdEnv, args []string, c *C) (*action[C], *pflag.FlagSet, error) {
	a, err := pick(env, args, cmd.actions, cmd.usage, cmd.name+": ", "action")
	if err != nil || a == nil {
		return nil, nil, err
	}
	name := args[0]
	fs := pflag.NewFlagSet(cmd.name+" "+name, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	if cmd.flags != nil {
		cmd.flags(fs, c)
	}
	if a.flags != nil {
		a.flags(fs, c)
	}
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: phiproxy %s %s %s %s\n\n%s\n\n", cmd.name, name, cmd.synopsis, a.usage, a.summary)
		fs.PrintDefaults()
	}
	return a, fs, nil
}

// runConfigured runs a command whose actions all need --config FILE: it
// picks the action, parses its flags and --config (into *cfgPath), loads
// the config into *cfg and runs the action. After --help it returns nil.
func (cmd *actions[C]) runConfigured(ctx context.Context, env *cmdEnv, args []string, c *C, cfgPath *string, cfg **config.Config) error {
	if cmd.synopsis == "" {
		cmd.synopsis = "--config FILE"
	}
	a, fs, err := cmd.pick(env, args, c)
	if a == nil {
		return err // nil after --help
	}
	fs.StringVar(cfgPath, "config", "", "config file (YAML), required")
	loaded, err := parseConfigFlags(fs, args[1:], cmd.name+" "+args[0], cfgPath)
	if loaded == nil {
		return err // nil after --help
	}
	*cfg = loaded
	return a.run(ctx, env, c)
}

// usage prints the command's usage line, its actions with their summaries,
// then its notes.
func (cmd *actions[C]) usage(w io.Writer, m map[string]action[C]) {
	width := 0
	for name := range m {
		width = max(width, len(name)+1)
	}
	fmt.Fprintln(w, cmd.head+"\n\nactions:")
	printSummaries(w, width, m, func(a action[C]) string { return a.summary })
	fmt.Fprintln(w, "\n"+cmd.notes)
}

// parseFlags parses the flags of the command what, which takes no
// arguments. It returns false and no error after --help.
func parseFlags(fs *pflag.FlagSet, args []string, what string) (bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return false, nil
		}
		return false, usageError{err}
	}
	if fs.NArg() > 0 {
		return false, usagef("%s takes no arguments, got %q", what, fs.Args())
	}
	return true, nil
}

// parseConfigFlags parses the flags of the command what (fs, whose
// --config flag fills *cfgPath), which takes no arguments, and loads the
// config. It returns a nil config and a nil error after --help.
func parseConfigFlags(fs *pflag.FlagSet, args []string, what string, cfgPath *string) (*config.Config, error) {
	if ok, err := parseFlags(fs, args, what); !ok {
		return nil, err
	}
	if *cfgPath == "" {
		return nil, usagef("%s: --config FILE is required", what)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}
