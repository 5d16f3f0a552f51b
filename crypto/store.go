package crypto

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/daead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/signature"
)

// Options are what the key code needs from the outside world.
type Options struct {
	// Env holds the environment variables (see Env); use EnvFromOS.
	Env Env
	// Now stamps key creation and retirement; time.Now when nil.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now().UTC()
	}
	return time.Now().UTC()
}

// Store manages the keyset files of keys.dir: create, rotate, retire,
// list. The `phiproxy keys` commands use it; the proxy uses a Keyring.
// Changes take an exclusive lock on keys.dir/.lock, so two operators cannot
// lose each other's rotation.
type Store struct {
	dir  string
	kek  *KEK
	opts Options
}

// OpenStore opens the KEK of keys; keys.Dir need not exist yet.
func OpenStore(ctx context.Context, keys config.Keys, opts Options) (*Store, error) {
	kek, err := OpenKEK(ctx, keys.KEK, opts.Env)
	if err != nil {
		return nil, err
	}
	return &Store{dir: keys.Dir, kek: kek, opts: opts}, nil
}

// Dir is keys.dir.
func (s *Store) Dir() string { return s.dir }

// LogValue implements slog.LogValuer: a Store holds the KEK.
func (*Store) LogValue() slog.Value { return redacted() }

// KeysetInfo describes one keyset file without any key material.
type KeysetInfo struct {
	Ref  Ref
	Mode string // randomized | deterministic; "" for the signing keyset
	Path string
	Keys []KeyInfo // present keys, then retired ones
}

// Primary returns the primary key's id.
func (ki KeysetInfo) Primary() uint32 {
	for _, k := range ki.Keys {
		if k.Status == StatusPrimary {
			return k.ID
		}
	}
	return 0
}

// KeyInfo describes one key of a keyset.
type KeyInfo struct {
	ID      uint32
	Status  string    // StatusPrimary, StatusEnabled, StatusDisabled, StatusRetired
	Created time.Time // zero if unknown
	Retired time.Time // for StatusRetired
}

// Key statuses shown by `keys list`.
const (
	StatusPrimary  = "primary"  // encrypts new values, decrypts
	StatusEnabled  = "enabled"  // decrypts values written before a rotation
	StatusDisabled = "disabled" // kept but unusable (not produced by phiproxy)
	StatusRetired  = "retired"  // removed: its values are unreadable
)

func info(l *loaded) KeysetInfo {
	ki := KeysetInfo{Ref: l.ref, Mode: l.mode, Path: l.path}
	for i := 0; i < l.handle.Len(); i++ {
		e, _ := l.handle.Entry(i)
		st := StatusEnabled
		switch {
		case e.IsPrimary():
			st = StatusPrimary
		case e.KeyStatus() != keyset.Enabled:
			st = StatusDisabled
		}
		ki.Keys = append(ki.Keys, KeyInfo{ID: e.KeyID(), Status: st, Created: l.created(e.KeyID())})
	}
	sort.SliceStable(ki.Keys, func(i, j int) bool { return ki.Keys[i].Created.Before(ki.Keys[j].Created) })
	for _, g := range l.gone {
		ki.Keys = append(ki.Keys, KeyInfo{ID: g.ID, Status: StatusRetired, Created: g.Created, Retired: g.Retired})
	}
	return ki
}

func template(r Ref, mode string) (*tinkpb.KeyTemplate, error) {
	switch {
	case r.purpose == purposeSigning:
		return signature.ED25519KeyTemplate(), nil
	case mode == config.ModeRandomized:
		return aead.AES256GCMKeyTemplate(), nil
	case mode == config.ModeDeterministic:
		return daead.AESSIVKeyTemplate(), nil
	}
	return nil, fmt.Errorf("%s: mode %q is not randomized or deterministic", r, mode)
}

// lock takes keys.dir's exclusive lock, creating the directory (0700).
func (s *Store) lock() (unlock func(), err error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keys dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("keys dir: lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// Create makes the keyset for r with one primary key unless it exists, and
// reports whether it did. mode is ignored for the signing keyset. An
// existing keyset of another mode is an error: changing a column's mode
// means re-encrypting it under a new key name.
func (s *Store) Create(r Ref, mode string) (created bool, err error) {
	if r.IsSigning() {
		mode = ""
	}
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	if l, err := readKeyset(s.dir, r, s.kek.aead); err == nil {
		if l.mode != mode {
			return false, fmt.Errorf("%s: keyset %s is %s but the config says %s; a key's mode cannot change: give the column a new key name and re-encrypt", r, l.path, l.mode, mode)
		}
		return false, nil
	} else if !IsMissing(err) {
		return false, err
	}
	kt, err := template(r, mode)
	if err != nil {
		return false, err
	}
	h, err := keyset.NewHandle(kt)
	if err != nil {
		return false, fmt.Errorf("%s: %v", r, err)
	}
	p, err := h.Primary()
	if err != nil {
		return false, fmt.Errorf("%s: %v", r, err)
	}
	l := &loaded{ref: r, mode: mode, handle: h, meta: []keyMeta{{ID: p.KeyID(), Created: s.opts.now()}}}
	if err := writeKeyset(s.dir, l, s.kek.aead); err != nil {
		return false, err
	}
	return true, nil
}

// CreateAll creates every missing keyset cfg needs, as `phiproxy keys
// create` does: one per column key name (config.KeyNames), with the mode
// of its columns, in name order, then the audit-signing keyset. seen,
// when not nil, is told of each in turn (cols is nil for the signing
// keyset) and whether it was created rather than kept.
func (s *Store) CreateAll(cfg *config.Config, seen func(r Ref, cols []config.Column, created bool)) error {
	names := cfg.KeyNames()
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	create := func(r Ref, cols []config.Column, mode string) error {
		created, err := s.Create(r, mode)
		if err == nil && seen != nil {
			seen(r, cols, created)
		}
		return err
	}
	for _, n := range sorted {
		if err := create(ColumnKey(n), names[n], names[n][0].Mode); err != nil {
			return err
		}
	}
	return create(SigningKey(), nil, "")
}

// InitKeys creates, quietly, what `phiproxy keys init` creates for cfg:
// the KEK file when the KEK is a file: KEK that does not exist yet, then
// every missing keyset (Store.CreateAll). What exists is kept.
func InitKeys(ctx context.Context, cfg *config.Config, opts Options) error {
	if path, ok := strings.CutPrefix(cfg.Keys.KEK, "file:"); ok {
		if _, err := InitFileKEK(path); err != nil {
			return err
		}
	}
	st, err := OpenStore(ctx, cfg.Keys, opts)
	if err != nil {
		return err
	}
	return st.CreateAll(cfg, nil)
}

// Load reads one keyset and describes it.
func (s *Store) Load(r Ref) (KeysetInfo, error) {
	l, err := readKeyset(s.dir, r, s.kek.aead)
	if err != nil {
		return KeysetInfo{}, err
	}
	return info(l), nil
}

// Rotate adds a new key to r's keyset and makes it the primary: new values
// are encrypted under it, values under older keys keep decrypting. It
// returns the new key id.
func (s *Store) Rotate(r Ref) (uint32, error) {
	unlock, err := s.lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	l, err := readKeyset(s.dir, r, s.kek.aead)
	if err != nil {
		return 0, err
	}
	kt, err := template(r, l.mode)
	if err != nil {
		return 0, err
	}
	m := keyset.NewManagerFromHandle(l.handle)
	id, err := m.Add(kt)
	if err != nil {
		return 0, fmt.Errorf("%s: rotate: %v", r, err)
	}
	if err := m.SetPrimary(id); err != nil {
		return 0, fmt.Errorf("%s: rotate: %v", r, err)
	}
	if l.handle, err = m.Handle(); err != nil {
		return 0, fmt.Errorf("%s: rotate: %v", r, err)
	}
	l.meta = append(l.meta, keyMeta{ID: id, Created: s.opts.now()})
	if err := writeKeyset(s.dir, l, s.kek.aead); err != nil {
		return 0, err
	}
	return id, nil
}

// Retire deletes key id from r's keyset. Every value still encrypted under
// it becomes unreadable for good (crypto-shredding) once no copy of the old
// keyset file remains. The primary key cannot be retired: rotate first.
// Whether data still uses the key is the caller's question (see
// docs/keys.md); Retire only records when it happened.
func (s *Store) Retire(r Ref, id uint32) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	l, err := readKeyset(s.dir, r, s.kek.aead)
	if err != nil {
		return err
	}
	found := false
	for i := 0; i < l.handle.Len(); i++ {
		e, _ := l.handle.Entry(i)
		if e.KeyID() != id {
			continue
		}
		found = true
		if e.IsPrimary() {
			return fmt.Errorf("%s: key id %d is the primary key; rotate first, re-encrypt, then retire it", r, id)
		}
	}
	if !found {
		for _, g := range l.gone {
			if g.ID == id {
				return fmt.Errorf("%s: key id %d was already retired on %s", r, id, g.Retired.Format(time.RFC3339))
			}
		}
		return fmt.Errorf("%s: has no key id %d (see `phiproxy keys list`)", r, id)
	}
	m := keyset.NewManagerFromHandle(l.handle)
	if err := m.Delete(id); err != nil {
		return fmt.Errorf("%s: retire key id %d: %v", r, id, err)
	}
	if l.handle, err = m.Handle(); err != nil {
		return fmt.Errorf("%s: retire key id %d: %v", r, id, err)
	}
	created := l.created(id)
	meta := l.meta[:0:0]
	for _, km := range l.meta {
		if km.ID != id {
			meta = append(meta, km)
		}
	}
	l.meta = meta
	l.gone = append(l.gone, keyMeta{ID: id, Created: created, Retired: s.opts.now()})
	return writeKeyset(s.dir, l, s.kek.aead)
}

// List describes every keyset file in keys.dir, sorted by purpose and name.
// A missing keys.dir lists nothing.
func (s *Store) List() ([]KeysetInfo, error) {
	refs, err := keysetRefs(s.dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("keys dir: %w", err)
	}
	var out []KeysetInfo
	for _, r := range refs {
		l, err := readKeyset(s.dir, r, s.kek.aead)
		if err != nil {
			return out, err
		}
		out = append(out, info(l))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Ref.purpose != out[j].Ref.purpose {
			return out[i].Ref.purpose < out[j].Ref.purpose
		}
		return out[i].Ref.name < out[j].Ref.name
	})
	return out, nil
}

// ExportPublic returns the public half of the audit-signing keyset (Tink
// JSON, no secrets) for auditors.
func (s *Store) ExportPublic() ([]byte, error) {
	l, err := readKeyset(s.dir, SigningKey(), s.kek.aead)
	if err != nil {
		return nil, err
	}
	pub, err := l.handle.Public()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", l.ref, err)
	}
	return publicJSON(pub)
}
