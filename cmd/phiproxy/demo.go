package main

import (
	"context"
	"errors"
)

// runDemo is filled in by its issue; until then it refuses clearly.
func runDemo(_ context.Context, _ *cmdEnv, _ []string) error {
	return errors.New("demo: not available in this build yet")
}
