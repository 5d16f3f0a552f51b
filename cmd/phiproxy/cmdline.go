package main

import (
	"errors"
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

// parseConfigFlags parses the flags of the command what (fs, whose
// --config flag fills *cfgPath), which takes no arguments, and loads the
// config. It returns a nil config and a nil error after --help.
func parseConfigFlags(fs *pflag.FlagSet, args []string, what string, cfgPath *string) (*config.Config, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usagef("%s takes no arguments, got %q", what, fs.Args())
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
