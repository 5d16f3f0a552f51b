package auth

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MockSecretFile is the name of the mock-salt secret in state_dir.
const MockSecretFile = "mock_auth_secret"

// mockSecretLen is the number of random bytes LoadMockSecret creates.
const mockSecretLen = 32

// LoadMockSecret returns the secret that keys the mock salts of unknown
// roles (Options.MockSecret), from dir/mock_auth_secret, creating the
// directory (0700) and the file (0600, 32 random bytes in hex) on first
// use. PostgreSQL keeps the same kind of secret (mock_auth_nonce) in
// pg_control; keeping it across restarts and reloads is what makes an
// unknown role's salt as stable as a real role's, so that a client cannot
// tell the two apart by asking twice. Instances behind one load balancer
// should share the file.
//
// A file that others can read or write, or that holds fewer than 32 bytes,
// is an error: the secret is what keeps role names from being enumerated.
func LoadMockSecret(dir string) ([]byte, error) {
	path := filepath.Join(dir, MockSecretFile)
	b, err := readMockSecret(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	// Written beside the final name, then linked into place: link fails
	// when the name exists, so instances starting together on one
	// state_dir settle on one complete secret.
	f, err := os.CreateTemp(dir, MockSecretFile+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	defer os.Remove(f.Name())
	secret := NewMockSecret()
	_, werr := f.WriteString(hex.EncodeToString(secret) + "\n")
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return nil, fmt.Errorf("state_dir: writing %s: %w", f.Name(), werr)
	}
	if err := os.Link(f.Name(), path); errors.Is(err, fs.ErrExist) {
		return readMockSecret(path) // another instance was first
	} else if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	return secret, nil
}

// NewMockSecret returns a random secret for Options.MockSecret.
func NewMockSecret() []byte { return randomBytes(mockSecretLen) }

func readMockSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %04o gives others access; it must be 0600", path, st.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(b) < mockSecretLen {
		return nil, fmt.Errorf("%s: not %d or more bytes in hex", path, mockSecretLen)
	}
	return b, nil
}
