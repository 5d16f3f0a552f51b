package main

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestOverlayUsage(t *testing.T) {
	env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	for _, args := range [][]string{nil, {"nope"}, {"install"}, {"status", "--config"}, {"status", "--config", "x.yaml", "extra"}, {"install", "--config", "/nonexistent.yaml"}} {
		var u usageError
		if err := runOverlay(context.Background(), env, args); !errors.As(err, &u) {
			t.Errorf("runOverlay(%q) = %v, want a usage error", args, err)
		}
	}
	if err := runOverlay(context.Background(), env, []string{"--help"}); err != nil {
		t.Errorf("--help: %v", err)
	}
}
