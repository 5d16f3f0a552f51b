package main

import (
	"context"
	"errors"
)

// runServe is filled in by its issue; until then it refuses clearly.
func runServe(_ context.Context, _ *cmdEnv, _ []string) error {
	return errors.New("serve: not available in this build yet")
}
