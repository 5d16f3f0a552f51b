package crypto

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phiproxy/phiproxy/internal/atomicfile"
	"github.com/phiproxy/phiproxy/internal/certpool"
)

// KEK is the key-encryption key every keyset file is encrypted under: a
// Tink AEAD keyset in a local file, or a Vault Transit key.
type KEK struct {
	uri  string
	aead tink.AEAD
}

// URI is the KEK as configured (file:/ABS/PATH or hcvault://…); no secret.
func (k *KEK) URI() string { return k.uri }

// LogValue implements slog.LogValuer: a file KEK holds key material.
func (*KEK) LogValue() slog.Value { return redacted() }

// String implements fmt.Stringer.
func (*KEK) String() string { return Redacted }

// vaultTimeout bounds each call to Vault; a reload that cannot reach Vault
// fails and keeps the keys already loaded.
const vaultTimeout = 15 * time.Second

// OpenKEK opens the KEK named by uri, as resolved by config.Load:
// "file:/ABS/PATH" or "hcvault://HOST[:PORT]/MOUNT/keys/NAME".
func OpenKEK(ctx context.Context, uri string, env Env) (*KEK, error) {
	switch {
	case strings.HasPrefix(uri, "file:"):
		path := strings.TrimPrefix(strings.TrimPrefix(uri, "file:"), "//")
		a, err := openFileKEK(path)
		if err != nil {
			return nil, err
		}
		return &KEK{uri: uri, aead: a}, nil
	case strings.HasPrefix(uri, "hcvault://"):
		a, err := openVaultKEK(ctx, uri, env)
		if err != nil {
			return nil, err
		}
		return &KEK{uri: uri, aead: a}, nil
	}
	return nil, fmt.Errorf("KEK %q is not file:PATH or hcvault://HOST/transit/keys/NAME", uri)
}

// checkKEKFile refuses a KEK file that others could read or that belongs to
// another user than uid (the running user): it is the one cleartext key.
func checkKEKFile(path string, uid int) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("KEK file %s does not exist; create it with `phiproxy keys init --config FILE`", path)
		}
		return fmt.Errorf("KEK file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("KEK file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("KEK file %s has mode %04o: refusing to use a KEK that group or others can access; run chmod 600 %s", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
		owner := "an unknown user"
		if ok {
			owner = fmt.Sprintf("uid %d", st.Uid)
		}
		return fmt.Errorf("KEK file %s is owned by %s, not by the user running phiproxy (uid %d); chown it to that user", path, owner, uid)
	}
	return nil
}

func openFileKEK(path string) (tink.AEAD, error) {
	if err := checkKEKFile(path, os.Getuid()); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("KEK file: %w", err)
	}
	defer f.Close()
	// The KEK file is by design the one cleartext keyset (DESIGN.md §9).
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(f))
	if err != nil {
		return nil, fmt.Errorf("KEK file %s is not a Tink JSON keyset (%v); restore it from backup", path, err)
	}
	a, err := aead.New(h)
	if err != nil {
		return nil, fmt.Errorf("KEK file %s does not hold an AEAD keyset: %v", path, err)
	}
	return a, nil
}

// InitFileKEK creates a new AES-256-GCM KEK keyset at path, mode 0600, and
// reports whether it did. An existing file is never overwritten: it is
// checked (mode, owner, content) and kept.
func InitFileKEK(path string) (created bool, err error) {
	if _, err := os.Lstat(path); err == nil {
		if _, err := openFileKEK(path); err != nil {
			return false, err
		}
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("KEK file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("KEK file: %w", err)
	}
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return false, fmt.Errorf("KEK: %v", err)
	}
	var buf strings.Builder
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return false, fmt.Errorf("KEK: %v", err)
	}
	// Link, not rename, so that two concurrent inits cannot both win.
	tmp := path + ".tmp"
	if err := atomicfile.Write(tmp, []byte(buf.String()), 0o600); err != nil {
		return false, fmt.Errorf("KEK file: %w", err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return false, fmt.Errorf("KEK file: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return false, fmt.Errorf("KEK file: %w", err)
	}
	return true, nil
}

// openVaultKEK returns an AEAD backed by a Vault Transit key. Keysets are
// sent to Vault's encrypt/decrypt endpoints; the Transit key never leaves
// Vault.
func openVaultKEK(_ context.Context, uri string, env Env) (tink.AEAD, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("KEK %q is not hcvault://HOST[:PORT]/MOUNT/keys/NAME", uri)
	}
	if env.VaultToken == "" {
		return nil, fmt.Errorf("KEK %s: set VAULT_TOKEN to a token allowed to use the transit key", uri)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if env.VaultCACert != "" {
		pool, err := certpool.Load(env.VaultCACert)
		if err != nil {
			return nil, fmt.Errorf("VAULT_CACERT: %w", err)
		}
		tlsCfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	client, err := api.NewClient(&api.Config{
		Address:    "https://" + u.Host,
		HttpClient: &http.Client{Transport: tr, Timeout: vaultTimeout},
		Timeout:    vaultTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("KEK %s: %v", uri, err)
	}
	client.SetToken(env.VaultToken)
	a, err := hcvault.NewAEAD(u.EscapedPath(), client.Logical())
	if err != nil {
		return nil, fmt.Errorf("KEK %s: %v (want hcvault://HOST[:PORT]/MOUNT/keys/NAME)", uri, err)
	}
	va := &vaultAEAD{uri: uri, a: a}
	if err := probe(va); err != nil {
		return nil, err
	}
	return va, nil
}

// vaultAEAD names the KEK in Vault's errors, and puts the client's
// multi-line messages on one line.
type vaultAEAD struct {
	uri string
	a   tink.AEAD
}

func (v *vaultAEAD) Encrypt(pt, ad []byte) ([]byte, error) {
	ct, err := v.a.Encrypt(pt, ad)
	if err != nil {
		return nil, &vaultError{uri: v.uri, op: "encrypt", err: err}
	}
	return ct, nil
}

func (v *vaultAEAD) Decrypt(ct, ad []byte) ([]byte, error) {
	pt, err := v.a.Decrypt(ct, ad)
	if err != nil {
		return nil, &vaultError{uri: v.uri, op: "decrypt", err: err}
	}
	return pt, nil
}

type vaultError struct {
	uri, op string
	err     error
}

func (e *vaultError) Error() string {
	return fmt.Sprintf("vault KEK %s: %s: %s", e.uri, e.op, strings.Join(strings.Fields(e.err.Error()), " "))
}

func (e *vaultError) Unwrap() error { return e.err }

// probe checks once that the KEK works (address, TLS, token, policy), so a
// Vault problem is one clear error rather than one per keyset file.
func probe(a tink.AEAD) error {
	msg, ad := []byte("phiproxy KEK probe"), []byte("phiproxy KEK probe")
	ct, err := a.Encrypt(msg, ad)
	if err != nil {
		return err
	}
	pt, err := a.Decrypt(ct, ad)
	if err != nil {
		return err
	}
	if string(pt) != string(msg) {
		return errors.New("KEK probe: decrypt returned other bytes")
	}
	return nil
}
