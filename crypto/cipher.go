package crypto

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Cipher encrypts and decrypts the values of the PHI columns that share one
// key name. It is immutable and safe for concurrent use; a Keyring reload
// makes new Ciphers and leaves the old ones working for whoever holds them.
type Cipher struct {
	name    string
	mode    string
	columns []string
	ad      []byte // the key name: binds every ciphertext to its key
	aead    tink.AEAD
	daead   tink.DeterministicAEAD
	primary uint32
	present map[uint32]bool
	retired map[uint32]time.Time
}

// Name is the key name (by default the column identity schema.table.column).
func (c *Cipher) Name() string { return c.name }

// Mode is config.ModeRandomized or config.ModeDeterministic.
func (c *Cipher) Mode() string { return c.mode }

// PrimaryKeyID is the id of the key new values are encrypted under.
func (c *Cipher) PrimaryKeyID() uint32 { return c.primary }

// LogValue implements slog.LogValuer: a Cipher holds key material.
func (*Cipher) LogValue() slog.Value { return redacted() }

// String implements fmt.Stringer so %v never walks into the key material.
func (*Cipher) String() string { return Redacted }

// GoString implements fmt.GoStringer for %#v.
func (*Cipher) GoString() string { return Redacted }

// Encrypt returns the envelope of plaintext under the primary key, with the
// key name as associated data. Deterministic ciphers return the same
// envelope for the same plaintext (as long as the primary key is the same).
func (c *Cipher) Encrypt(plaintext []byte) ([]byte, error) {
	return c.AppendEncrypt(nil, plaintext)
}

// AppendEncrypt appends the envelope of plaintext to dst and returns the
// extended slice, as Encrypt does. The proxy appends straight into the
// protocol message it is building, which saves Encrypt's allocation and
// copy of the ciphertext.
func (c *Cipher) AppendEncrypt(dst, plaintext []byte) ([]byte, error) {
	var ct []byte
	var err error
	if c.daead != nil {
		ct, err = c.daead.EncryptDeterministically(plaintext, c.ad)
	} else {
		ct, err = c.aead.Encrypt(plaintext, c.ad)
	}
	if err != nil {
		// Tink's errors name no plaintext, but keep them out of the message
		// sent to clients all the same.
		return dst, pgerr.Newf(pgerr.Internal, "cannot encrypt a value for %s", c.what()).WithCause(err)
	}
	// Tink has no API that encrypts into a caller's buffer, so the header
	// costs one copy of the ciphertext.
	if dst == nil {
		dst = make([]byte, 0, HeaderLen+len(ct))
	}
	dst = append(dst, EnvelopeHeader...)
	return append(dst, ct...), nil
}

// Decrypt authenticates and decrypts an envelope made by Encrypt for the
// same key name. Any failure is a *pgerr.Error (SQLSTATE XX001) whose Cause
// is a *DecryptError naming the key, its columns and the key id.
//
// There is deliberately no AppendDecrypt: Tink's AES-GCM and AES-SIV
// return a fresh plaintext slice and take no destination, so appending to
// a caller's buffer could only add a copy (BenchmarkCipher's
// append-decrypt case: the same allocations, 1 for GCM and 7 for SIV, and
// more bytes moved).
func (c *Cipher) Decrypt(envelope []byte) ([]byte, error) {
	if !IsEnvelope(envelope) {
		return nil, c.decryptError(envelope, NotEnvelope, nil)
	}
	var pt []byte
	var err error
	if c.daead != nil {
		pt, err = c.daead.DecryptDeterministically(envelope[HeaderLen:], c.ad)
	} else {
		pt, err = c.aead.Decrypt(envelope[HeaderLen:], c.ad)
	}
	if err != nil {
		return nil, c.decryptError(envelope, Unauthentic, err)
	}
	return pt, nil
}

func (c *Cipher) decryptError(envelope []byte, reason DecryptFailure, cause error) error {
	de := &DecryptError{Key: c.name, Columns: c.columns, Reason: reason, cause: cause}
	if id, ok := EnvelopeKeyID(envelope); ok {
		de.KeyID, de.HasKeyID = id, true
		if at, ok := c.retired[id]; ok {
			de.Reason, de.RetiredAt = RetiredKey, at
		} else if !c.present[id] {
			de.Reason = UnknownKey
		}
	}
	return pgerr.New(pgerr.DataCorrupted, de.Error()).
		WithHint(de.hint()).
		WithCause(de)
}

func (c *Cipher) what() string { return describeKey(c.name, c.columns) }

// describeKey names a key by its columns, which is what a DBA recognises.
func describeKey(name string, columns []string) string {
	switch {
	case len(columns) == 0:
		return "key " + name
	case len(columns) == 1 && columns[0] == name:
		return "column " + name
	case len(columns) == 1:
		return fmt.Sprintf("column %s (key %s)", columns[0], name)
	}
	return fmt.Sprintf("key %s (columns %s)", name, strings.Join(columns, ", "))
}

// DecryptFailure classifies why Decrypt failed.
type DecryptFailure int

// Reasons for a failed Decrypt.
const (
	// NotEnvelope: the value does not start with the envelope header.
	NotEnvelope DecryptFailure = iota + 1
	// UnknownKey: the key id was never part of this keyset: the value was
	// encrypted under another keyset (another instance, a restored backup
	// of other keys, or copied from elsewhere).
	UnknownKey
	// RetiredKey: the key was retired; its data is crypto-shredded.
	RetiredKey
	// Unauthentic: the key is present but the value does not authenticate:
	// it was altered, or it belongs to a column with another key name.
	Unauthentic
)

// DecryptError describes a failed Decrypt. It never holds the value.
type DecryptError struct {
	Key       string   // key name
	Columns   []string // the PHI columns using the key, when known
	KeyID     uint32   // key id from the envelope, if HasKeyID
	HasKeyID  bool
	Reason    DecryptFailure
	RetiredAt time.Time // for RetiredKey, when the key was retired
	cause     error
}

func (e *DecryptError) Error() string {
	what := describeKey(e.Key, e.Columns)
	switch e.Reason {
	case NotEnvelope:
		return fmt.Sprintf("cannot decrypt a value of %s: it is not a phiproxy ciphertext", what)
	case UnknownKey:
		return fmt.Sprintf("cannot decrypt a value of %s: key id %d is not in its keyset", what, e.KeyID)
	case RetiredKey:
		return fmt.Sprintf("cannot decrypt a value of %s: key id %d was retired on %s; data under it is unreadable",
			what, e.KeyID, e.RetiredAt.UTC().Format(time.RFC3339))
	}
	if e.HasKeyID {
		return fmt.Sprintf("cannot decrypt a value of %s (key id %d): the ciphertext does not authenticate", what, e.KeyID)
	}
	return fmt.Sprintf("cannot decrypt a value of %s: the ciphertext does not authenticate", what)
}

func (e *DecryptError) hint() string {
	switch e.Reason {
	case UnknownKey:
		return "The value was encrypted under another keyset: check keys.dir and the KEK, or restore the keyset backup that holds this key id."
	case RetiredKey:
		return "Retiring a key crypto-shreds the values under it; only a keyset backup from before the retirement can read them."
	case Unauthentic:
		return "The value was altered, or copied from a column with another key name."
	}
	return ""
}

// Unwrap returns Tink's error, which holds no key material or plaintext.
func (e *DecryptError) Unwrap() error { return e.cause }

// validMode reports whether mode is one of the config modes.
func validMode(mode string) bool {
	return mode == config.ModeRandomized || mode == config.ModeDeterministic
}
