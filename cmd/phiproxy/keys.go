package main

import (
	"context"
	"errors"
)

// runKeys is filled in by its issue; until then it refuses clearly.
func runKeys(_ context.Context, _ *cmdEnv, _ []string) error {
	return errors.New("keys: not available in this build yet")
}
