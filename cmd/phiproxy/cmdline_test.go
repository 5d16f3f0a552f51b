package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// wantUsageErrors fails t unless run answers each of args with a usage
// error (exit status 2); it returns the environment run wrote to.
func wantUsageErrors(t *testing.T, run func(context.Context, *cmdEnv, []string) error, args ...[]string) *cmdEnv {
	t.Helper()
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	for _, a := range args {
		var u usageError
		if err := run(context.Background(), env, a); !errors.As(err, &u) {
			t.Errorf("%q: %v, want a usage error", a, err)
		}
	}
	return env
}
