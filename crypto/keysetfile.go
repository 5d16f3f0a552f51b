package crypto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/atomicfile"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/daead"
	"github.com/tink-crypto/tink-go/v2/daead/aessiv"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature/ed25519"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// A keyset file (keys.dir/<purpose>.<name>.json) is one JSON document: the
// key name and mode, per-key metadata Tink does not keep (creation and
// retirement times: no secrets), and the Tink keyset encrypted under the KEK
// with associated data that binds it to its purpose, name and mode, so a
// keyset file renamed to another column's name does not load.
const fileFormat = "phiproxy-keyset/1"

// Purpose of a keyset.
const (
	purposeColumn  = "column"
	purposeSigning = "audit-signing"
)

// signingName is the name of the per-instance audit-signing keyset.
const signingName = "audit-signing"

// Ref names one keyset: a column key by its key name, or the instance's
// audit-signing keyset.
type Ref struct {
	purpose string
	name    string
}

// ColumnKey refers to the keyset of a column key name (config Column.Key).
func ColumnKey(name string) Ref { return Ref{purposeColumn, name} }

// SigningKey refers to the instance's Ed25519 audit-signing keyset.
func SigningKey() Ref { return Ref{purposeSigning, signingName} }

// Name is the key name ("audit-signing" for the signing keyset).
func (r Ref) Name() string { return r.name }

// IsSigning reports whether r is the audit-signing keyset.
func (r Ref) IsSigning() bool { return r.purpose == purposeSigning }

func (r Ref) String() string {
	if r.IsSigning() {
		return "audit-signing keyset"
	}
	return "key " + r.name
}

// fileName escapes the key name so that any PostgreSQL identifier makes one
// safe file name: bytes outside [A-Za-z0-9_.-] (and a leading dot) become
// %XX.
func (r Ref) fileName() string {
	var b strings.Builder
	b.WriteString(r.purpose)
	b.WriteByte('.')
	for i := 0; i < len(r.name); i++ {
		c := r.name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || (c == '.' && i > 0)
		if ok {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	b.WriteString(".json")
	return b.String()
}

// refFromFileName reverses fileName; false for other files.
func refFromFileName(fn string) (Ref, bool) {
	purpose, rest, ok := strings.Cut(fn, ".")
	if !ok || (purpose != purposeColumn && purpose != purposeSigning) || !strings.HasSuffix(rest, ".json") {
		return Ref{}, false
	}
	enc := strings.TrimSuffix(rest, ".json")
	var b strings.Builder
	for i := 0; i < len(enc); i++ {
		if enc[i] != '%' {
			b.WriteByte(enc[i])
			continue
		}
		if i+2 >= len(enc) {
			return Ref{}, false
		}
		var c byte
		if _, err := fmt.Sscanf(enc[i+1:i+3], "%02X", &c); err != nil {
			return Ref{}, false
		}
		b.WriteByte(c)
		i += 2
	}
	r := Ref{purpose, b.String()}
	if r.name == "" || r.fileName() != fn {
		return Ref{}, false
	}
	return r, true
}

// keysetRefs returns the keysets that have a file in dir, in directory
// order; other files are not keysets and are passed over. An error is
// os.ReadDir's.
func keysetRefs(dir string) ([]Ref, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var refs []Ref
	for _, e := range ents {
		if r, ok := refFromFileName(e.Name()); ok && e.Type().IsRegular() {
			refs = append(refs, r)
		}
	}
	return refs, nil
}

type fileDoc struct {
	Format  string          `json:"format"`
	Purpose string          `json:"purpose"`
	Name    string          `json:"name"`
	Mode    string          `json:"mode,omitempty"`
	Keys    []keyMeta       `json:"keys"`
	Retired []keyMeta       `json:"retired,omitempty"`
	Keyset  json.RawMessage `json:"keyset"`
}

type keyMeta struct {
	ID      uint32    `json:"id"`
	Created time.Time `json:"created,omitzero"`
	Retired time.Time `json:"retired,omitzero"`
}

// loaded is a decrypted keyset with its metadata.
type loaded struct {
	ref    Ref
	path   string
	mode   string // column keysets only
	handle *keyset.Handle
	meta   []keyMeta // for keys in the keyset
	gone   []keyMeta // retired keys
}

// LogValue implements slog.LogValuer: loaded holds a keyset handle.
func (*loaded) LogValue() slog.Value { return redacted() }

func (l *loaded) created(id uint32) time.Time {
	for _, m := range l.meta {
		if m.ID == id {
			return m.Created
		}
	}
	return time.Time{}
}

// associatedData binds an encrypted keyset to what it is for.
func associatedData(r Ref, mode string) []byte {
	return []byte("phiproxy keyset v1\x00" + r.purpose + "\x00" + r.name + "\x00" + mode)
}

// readKeyset loads and validates the keyset file for r from dir.
func readKeyset(dir string, r Ref, kek tink.AEAD) (*loaded, error) {
	path := filepath.Join(dir, r.fileName())
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &missingError{ref: r, path: path}
		}
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	var doc fileDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: keyset file %s is corrupted (not a phiproxy keyset file: %v); restore it from backup", r, path, err)
	}
	if doc.Format != fileFormat {
		return nil, fmt.Errorf("%s: keyset file %s has format %q, want %q; restore it from backup", r, path, doc.Format, fileFormat)
	}
	if doc.Purpose != r.purpose || doc.Name != r.name {
		return nil, fmt.Errorf("%s: keyset file %s holds %s %q instead; was it renamed?", r, path, doc.Purpose, doc.Name)
	}
	if r.purpose == purposeColumn && !validMode(doc.Mode) {
		return nil, fmt.Errorf("%s: keyset file %s has mode %q, not randomized or deterministic", r, path, doc.Mode)
	}
	h, err := keyset.ReadWithAssociatedData(keyset.NewJSONReader(bytes.NewReader(doc.Keyset)), kek, associatedData(r, doc.Mode))
	if err != nil {
		// Tink's message says which layer failed; it holds no key bytes.
		return nil, fmt.Errorf("%s: cannot decrypt keyset file %s with the KEK: wrong KEK, or the file is corrupted or was altered (%v)", r, path, err)
	}
	l := &loaded{ref: r, path: path, mode: doc.Mode, handle: h, meta: doc.Keys, gone: doc.Retired}
	if err := l.validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// validate checks that every key is of the kind the purpose and mode need
// and carries Tink's key-id prefix, which the envelope relies on.
func (l *loaded) validate() error {
	if _, err := l.handle.Primary(); err != nil {
		return fmt.Errorf("%s: keyset file %s has no primary key", l.ref, l.path)
	}
	for i := 0; i < l.handle.Len(); i++ {
		e, err := l.handle.Entry(i)
		if err != nil {
			return fmt.Errorf("%s: keyset file %s: %v", l.ref, l.path, err)
		}
		var ok bool
		switch k := e.Key().(type) {
		case *aesgcm.Key:
			p := k.Parameters().(*aesgcm.Parameters)
			ok = l.ref.purpose == purposeColumn && l.mode == config.ModeRandomized &&
				p.KeySizeInBytes() == 32 && p.Variant() == aesgcm.VariantTink
		case *aessiv.Key:
			p := k.Parameters().(*aessiv.Parameters)
			ok = l.ref.purpose == purposeColumn && l.mode == config.ModeDeterministic &&
				p.KeySizeInBytes() == 64 && p.Variant() == aessiv.VariantTink
		case *ed25519.PrivateKey:
			p := k.Parameters().(*ed25519.Parameters)
			ok = l.ref.purpose == purposeSigning && p.Variant() == ed25519.VariantTink
		}
		if !ok {
			want := "Ed25519 (Tink prefix)"
			switch {
			case l.ref.purpose == purposeColumn && l.mode == config.ModeRandomized:
				want = "AES-256-GCM (Tink prefix)"
			case l.ref.purpose == purposeColumn:
				want = "AES-SIV 512-bit (Tink prefix)"
			}
			return fmt.Errorf("%s: keyset file %s: key id %d is not %s", l.ref, l.path, e.KeyID(), want)
		}
	}
	return nil
}

// writeKeyset encrypts l's keyset under kek and replaces its file
// atomically: temp file (0600) in the same directory, fsync, rename, fsync
// of the directory. The cleartext keyset exists only in memory.
func writeKeyset(dir string, l *loaded, kek tink.AEAD) error {
	var ks bytes.Buffer
	if err := l.handle.WriteWithAssociatedData(keyset.NewJSONWriter(&ks), kek, associatedData(l.ref, l.mode)); err != nil {
		return fmt.Errorf("%s: cannot encrypt the keyset under the KEK: %v", l.ref, err)
	}
	doc := fileDoc{Format: fileFormat, Purpose: l.ref.purpose, Name: l.ref.name, Mode: l.mode,
		Keys: l.meta, Retired: l.gone, Keyset: json.RawMessage(ks.Bytes())}
	sort.Slice(doc.Keys, func(i, j int) bool { return doc.Keys[i].Created.Before(doc.Keys[j].Created) })
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %v", l.ref, err)
	}
	data = append(data, '\n')
	path := filepath.Join(dir, l.ref.fileName())
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("%s: %w", l.ref, err)
	}
	l.path = path
	return nil
}

// missingError says a keyset file does not exist.
type missingError struct {
	ref  Ref
	path string
}

func (e *missingError) Error() string {
	return fmt.Sprintf("%s: no keyset file %s; run `phiproxy keys create --config FILE`", e.ref, e.path)
}

// IsMissing reports whether err says a keyset file does not exist.
func IsMissing(err error) bool {
	var m *missingError
	return errors.As(err, &m)
}

// newCipher builds the column cipher of a loaded column keyset.
func newCipher(l *loaded, columns []string) (*Cipher, error) {
	c := &Cipher{
		name:    l.ref.name,
		mode:    l.mode,
		columns: columns,
		ad:      []byte(l.ref.name),
		present: map[uint32]bool{},
		retired: map[uint32]time.Time{},
	}
	p, err := l.handle.Primary()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", l.ref, err)
	}
	c.primary = p.KeyID()
	for i := 0; i < l.handle.Len(); i++ {
		e, _ := l.handle.Entry(i)
		c.present[e.KeyID()] = true
	}
	for _, g := range l.gone {
		if !c.present[g.ID] {
			c.retired[g.ID] = g.Retired
		}
	}
	switch l.mode {
	case config.ModeRandomized:
		c.aead, err = aead.New(l.handle)
	case config.ModeDeterministic:
		c.daead, err = daead.New(l.handle)
	default:
		err = fmt.Errorf("mode %q", l.mode)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: cannot build its cipher: %v", l.ref, err)
	}
	return c, nil
}
