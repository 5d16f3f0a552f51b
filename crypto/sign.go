package crypto

import (
	"bytes"
	"fmt"
	"log/slog"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/signature"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Signer signs audit checkpoints with the instance's Ed25519 keyset. It is
// immutable and safe for concurrent use.
type Signer struct {
	s       tink.Signer
	public  *keyset.Handle
	primary uint32
}

func newSigner(l *loaded) (*Signer, error) {
	s, err := signature.NewSigner(l.handle)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", l.ref, err)
	}
	pub, err := l.handle.Public()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", l.ref, err)
	}
	p, err := l.handle.Primary()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", l.ref, err)
	}
	return &Signer{s: s, public: pub, primary: p.KeyID()}, nil
}

// Sign returns a signature over data (Tink format: 5-byte key-id prefix and
// the 64-byte Ed25519 signature).
func (s *Signer) Sign(data []byte) ([]byte, error) {
	sig, err := s.s.Sign(data)
	if err != nil {
		return nil, fmt.Errorf("audit-signing keyset: sign: %v", err)
	}
	return sig, nil
}

// KeyID is the id of the key new signatures are made with.
func (s *Signer) KeyID() uint32 { return s.primary }

// PublicKeyset returns the public half of the signing keyset as Tink JSON,
// the document `phiproxy keys export-public` prints for auditors. It holds
// every key still in the keyset, so signatures made before a rotation keep
// verifying.
func (s *Signer) PublicKeyset() ([]byte, error) {
	return publicJSON(s.public)
}

// Verifier returns the verifier of this signer's public keyset.
func (s *Signer) Verifier() (*Verifier, error) {
	v, err := signature.NewVerifier(s.public)
	if err != nil {
		return nil, fmt.Errorf("audit-signing keyset: %v", err)
	}
	return &Verifier{v: v}, nil
}

// LogValue implements slog.LogValuer: a Signer holds a private key.
func (*Signer) LogValue() slog.Value { return redacted() }

// String implements fmt.Stringer.
func (*Signer) String() string { return Redacted }

func publicJSON(h *keyset.Handle) ([]byte, error) {
	var buf bytes.Buffer
	if err := h.WriteWithNoSecrets(keyset.NewJSONWriter(&buf)); err != nil {
		return nil, fmt.Errorf("audit-signing keyset: export public keyset: %v", err)
	}
	return buf.Bytes(), nil
}

// Verifier checks audit signatures against a public keyset.
type Verifier struct {
	v tink.Verifier
}

// NewVerifier reads a public keyset as printed by `keys export-public`. A
// keyset holding private keys is refused: auditors never need one.
func NewVerifier(publicKeyset []byte) (*Verifier, error) {
	h, err := keyset.ReadWithNoSecrets(keyset.NewJSONReader(bytes.NewReader(publicKeyset)))
	if err != nil {
		return nil, fmt.Errorf("public keyset: %v", err)
	}
	v, err := signature.NewVerifier(h)
	if err != nil {
		return nil, fmt.Errorf("public keyset: not a signature verification keyset: %v", err)
	}
	return &Verifier{v: v}, nil
}

// Verify returns nil if sig is a valid signature of data by any key of the
// keyset.
func (v *Verifier) Verify(sig, data []byte) error {
	if err := v.v.Verify(sig, data); err != nil {
		return fmt.Errorf("audit signature does not verify: %v", err)
	}
	return nil
}
