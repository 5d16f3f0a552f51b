package crypto

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// Keyring holds the ciphers of every key name in the config, and the
// instance's audit signer, as one immutable snapshot behind an atomic
// pointer. Any number of sessions may call it concurrently; Reload builds a
// whole new snapshot and swaps it in only if everything loaded.
type Keyring struct {
	opts Options
	cur  atomic.Pointer[snapshot]
}

type snapshot struct {
	cfg     *config.Config
	ciphers map[string]*Cipher
	signer  *Signer
	// signerErr says why there is no signer (its keyset is missing).
	signerErr error
	// rec recognises envelopes of every key of ciphers (safety net).
	rec *Recognizer
}

// Open loads, under cfg's KEK, the keyset of every key name in cfg's phi
// map, and the audit-signing keyset if there is one. A missing or
// unreadable column keyset is an error.
func Open(ctx context.Context, cfg *config.Config, opts Options) (*Keyring, error) {
	k := &Keyring{opts: opts}
	if err := k.Reload(ctx, cfg); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload loads everything again, from cfg (a newly loaded config) or, if
// cfg is nil, from the config of the last successful load, and swaps the
// new keys in atomically. On error the keys in use stay as they were. The
// proxy calls it on SIGHUP, after `keys rotate`.
func (k *Keyring) Reload(ctx context.Context, cfg *config.Config) error {
	if cfg == nil {
		cur := k.cur.Load()
		if cur == nil {
			panic("BUG: Keyring.Reload(nil) before a successful load")
		}
		cfg = cur.cfg
	}
	s, err := load(ctx, cfg, k.opts)
	if err != nil {
		return err
	}
	k.cur.Store(s)
	return nil
}

func load(ctx context.Context, cfg *config.Config, opts Options) (*snapshot, error) {
	kek, err := OpenKEK(ctx, cfg.Keys.KEK, opts.Env)
	if err != nil {
		return nil, err
	}
	s := &snapshot{cfg: cfg, ciphers: map[string]*Cipher{}}
	var errs []error
	names := cfg.KeyNames()
	for _, name := range slices.Sorted(maps.Keys(names)) {
		cols := names[name]
		l, err := readKeyset(cfg.Keys.Dir, ColumnKey(name), kek.aead)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		idents := make([]string, len(cols))
		for i, c := range cols {
			idents[i] = c.Ident()
		}
		if l.mode != cols[0].Mode {
			errs = append(errs, fmt.Errorf("%s: keyset %s is %s but %s is configured %s; a key's mode cannot change: give the column a new key name and re-encrypt",
				l.ref, l.path, l.mode, cols[0].Ident(), cols[0].Mode))
			continue
		}
		c, err := newCipher(l, idents)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.ciphers[name] = c
	}
	if l, err := readKeyset(cfg.Keys.Dir, SigningKey(), kek.aead); err == nil {
		if s.signer, err = newSigner(l); err != nil {
			errs = append(errs, err)
		}
	} else if IsMissing(err) {
		s.signerErr = err
	} else {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.rec = recognizerOf(s.ciphers)
	return s, nil
}

// Cipher returns the cipher of a key name (config Column.Key) from the
// current snapshot. The proxy may hold it for a statement; a reload does
// not disturb it.
func (k *Keyring) Cipher(keyName string) (*Cipher, error) {
	if c, ok := k.cur.Load().ciphers[keyName]; ok {
		return c, nil
	}
	return nil, pgerr.Newf(pgerr.Internal, "no keyset is loaded for key %s", keyName).
		WithHint("Add the column to the phi map, run `phiproxy keys create`, then reload.")
}

// Encrypt encrypts plaintext under the current primary key of keyName.
func (k *Keyring) Encrypt(keyName string, plaintext []byte) ([]byte, error) {
	c, err := k.Cipher(keyName)
	if err != nil {
		return nil, err
	}
	return c.Encrypt(plaintext)
}

// Decrypt decrypts an envelope of keyName.
func (k *Keyring) Decrypt(keyName string, envelope []byte) ([]byte, error) {
	c, err := k.Cipher(keyName)
	if err != nil {
		return nil, err
	}
	return c.Decrypt(envelope)
}

// Signer returns the audit signer, or an error if keys.dir has no
// audit-signing keyset (`phiproxy keys create` makes one).
func (k *Keyring) Signer() (*Signer, error) {
	s := k.cur.Load()
	if s.signer == nil {
		return nil, s.signerErr
	}
	return s.signer, nil
}

// Recognizer returns the envelope recognizer of the current snapshot: it
// knows the id of every key, present or retired, of every loaded column
// keyset.
func (k *Keyring) Recognizer() *Recognizer { return k.cur.Load().rec }

// recognizerOf returns a Recognizer for the keys of ciphers. A retired
// key's id stays known: its values may still be in the database.
func recognizerOf(ciphers map[string]*Cipher) *Recognizer {
	var ids []uint32
	for _, c := range ciphers {
		for id := range c.present {
			ids = append(ids, id)
		}
		for id := range c.retired {
			ids = append(ids, id)
		}
	}
	return NewRecognizer(ids...)
}

// KeyNames returns the loaded key names, sorted.
func (k *Keyring) KeyNames() []string { return slices.Sorted(maps.Keys(k.cur.Load().ciphers)) }

// LogValue implements slog.LogValuer: a Keyring holds keys.
func (*Keyring) LogValue() slog.Value { return redacted() }

// String implements fmt.Stringer.
func (*Keyring) String() string { return Redacted }
