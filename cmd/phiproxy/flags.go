package main

import (
	"errors"

	"github.com/spf13/pflag"

	"github.com/phiproxy/phiproxy/config"
)

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
