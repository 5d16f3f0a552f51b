package crypto

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSignAndVerify(t *testing.T) {
	kr, st := testRing(t)
	s, err := kr.Signer()
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(`{"v":1,"seq":1000,"action":"checkpoint"}`)
	sig, err := s.Sign(data)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tinkKeyID(sig); !ok || id != s.KeyID() {
		t.Fatalf("signature key id %d, signer %d", id, s.KeyID())
	}
	pub, err := st.ExportPublic()
	if err != nil {
		t.Fatal(err)
	}
	fromSigner, err := s.PublicKeyset()
	if err != nil || !bytes.Equal(pub, fromSigner) {
		t.Fatalf("export-public and Signer.PublicKeyset differ (%v)", err)
	}
	v, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(sig, data); err != nil {
		t.Fatalf("valid signature: %v", err)
	}
	tampered := bytes.Clone(data)
	tampered[5] ^= 1
	badSig := bytes.Clone(sig)
	badSig[len(badSig)-1] ^= 1
	for name, c := range map[string]struct{ sig, data []byte }{
		"altered data":      {sig, tampered},
		"altered signature": {badSig, data},
		"empty signature":   {nil, data},
	} {
		if err := v.Verify(c.sig, c.data); err == nil {
			t.Errorf("%s verifies", name)
		}
	}

	// After rotating the signing key, the new export verifies old and new
	// checkpoints; the old export does not know the new key.
	if _, err := st.Rotate(SigningKey()); err != nil {
		t.Fatal(err)
	}
	if err := kr.Reload(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	s2, _ := kr.Signer()
	sig2, err := s2.Sign(data)
	if err != nil {
		t.Fatal(err)
	}
	pub2, _ := st.ExportPublic()
	v2, err := NewVerifier(pub2)
	if err != nil {
		t.Fatal(err)
	}
	for i, sg := range [][]byte{sig, sig2} {
		if err := v2.Verify(sg, data); err != nil {
			t.Errorf("signature %d under the rotated public keyset: %v", i, err)
		}
	}
	if err := v.Verify(sig2, data); err == nil {
		t.Error("the old public keyset verified a signature by the new key")
	}
}

func TestExportPublicHoldsNoPrivateKey(t *testing.T) {
	cfg, st := setup(t, testPHI)
	pub, err := st.ExportPublic()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pub), "Ed25519PublicKey") || strings.Contains(string(pub), "PrivateKey") {
		t.Fatalf("export-public is not a public keyset: %s", pub)
	}
	// A private keyset (here: the KEK) is refused as a verifier.
	kek, _ := os.ReadFile(strings.TrimPrefix(cfg.Keys.KEK, "file:"))
	if _, err := NewVerifier(kek); err == nil {
		t.Fatal("NewVerifier accepted a keyset with secret key material")
	}
	if _, err := NewVerifier([]byte("{}")); err == nil {
		t.Fatal("NewVerifier accepted an empty keyset")
	}
}

func TestSignerMissing(t *testing.T) {
	cfg, _ := setup(t, testPHI)
	if err := os.Remove(filepath.Join(cfg.Keys.Dir, SigningKey().fileName())); err != nil {
		t.Fatal(err)
	}
	kr := openRing(t, cfg)
	if _, err := kr.Signer(); err == nil || !strings.Contains(err.Error(), "keys create") {
		t.Fatalf("Signer without a keyset: %v", err)
	}
}

func tinkKeyID(b []byte) (uint32, bool) {
	if len(b) < 5 || b[0] != 1 {
		return 0, false
	}
	return uint32(b[1])<<24 | uint32(b[2])<<16 | uint32(b[3])<<8 | uint32(b[4]), true
}
