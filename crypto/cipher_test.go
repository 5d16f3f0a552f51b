package crypto

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/phiproxy/phiproxy/pgerr"
	"github.com/tink-crypto/tink-go/v2/tink"
)

func TestRoundTrip(t *testing.T) {
	kr, _ := testRing(t)
	sizes := []struct {
		name string
		n    int
	}{{"empty", 0}, {"1 byte", 1}, {"16 bytes", 16}, {"4 KiB", 4 << 10}, {"1 MiB", 1 << 20}}
	keys := []struct{ key, mode string }{
		{"public.patients.ssn", "deterministic"},
		{"public.patients.diagnosis", "randomized"},
		{"visit notes/v1", "randomized"},
	}
	for _, k := range keys {
		for _, sz := range sizes {
			t.Run(k.mode+" "+k.key+" "+sz.name+" round-trips", func(t *testing.T) {
				c := mustCipher(t, kr, k.key)
				if c.Mode() != k.mode {
					t.Fatalf("mode %s, want %s", c.Mode(), k.mode)
				}
				pt := bytes.Repeat([]byte{0xa5}, sz.n)
				env := mustEncrypt(t, c, pt)
				if !IsEnvelope(env) {
					t.Fatalf("Encrypt output % x… is not an envelope", env[:min(len(env), 8)])
				}
				if id, _ := EnvelopeKeyID(env); id != c.PrimaryKeyID() {
					t.Fatalf("envelope key id %d, primary %d", id, c.PrimaryKeyID())
				}
				if sz.n > 16 && bytes.Contains(env, pt) {
					t.Fatal("ciphertext contains the plaintext")
				}
				got, err := c.Decrypt(env)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, pt) {
					t.Fatalf("Decrypt(Encrypt(x)) differs from x (len %d vs %d)", len(got), len(pt))
				}
			})
		}
	}
}

func TestDeterministicEquality(t *testing.T) {
	cfg, _ := setup(t, testPHI)
	kr := openRing(t, cfg)
	det := mustCipher(t, kr, "public.patients.ssn")
	rnd := mustCipher(t, kr, "public.patients.diagnosis")
	tests := []struct {
		name      string
		c         *Cipher
		a, b      string
		wantEqual bool
	}{
		{"deterministic: equal values encrypt equally", det, "123-45-6789", "123-45-6789", true},
		{"deterministic: different values encrypt differently", det, "123-45-6789", "123-45-6780", false},
		{"deterministic: empty values encrypt equally", det, "", "", true},
		{"randomized: equal values encrypt differently", rnd, "flu", "flu", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bytes.Equal(mustEncrypt(t, tt.c, []byte(tt.a)), mustEncrypt(t, tt.c, []byte(tt.b))); got != tt.wantEqual {
				t.Fatalf("equal = %v, want %v", got, tt.wantEqual)
			}
		})
	}
	// Columns that share a key name compare: the proxy uses one cipher.
	a, _ := kr.Encrypt("public.patients.ssn", []byte("x"))
	b, _ := kr.Encrypt(cfg.PHI["public.visits"]["patient_ssn"].Key, []byte("x"))
	if !bytes.Equal(a, b) {
		t.Fatal("columns sharing a key do not encrypt equally")
	}
}

// decryptErr returns the DecryptError inside err and checks its SQLSTATE.
func decryptErr(t *testing.T, err error) *DecryptError {
	t.Helper()
	if err == nil {
		t.Fatal("Decrypt succeeded, want an error")
	}
	if code := pgerr.CodeOf(err); code != pgerr.DataCorrupted {
		t.Fatalf("SQLSTATE %s, want %s: %v", code, pgerr.DataCorrupted, err)
	}
	var de *DecryptError
	if !errors.As(err, &de) {
		t.Fatalf("error %v carries no *DecryptError", err)
	}
	return de
}

func TestDecryptFailures(t *testing.T) {
	cfg, _ := setup(t, testPHI)
	kr := openRing(t, cfg)
	ssn := mustCipher(t, kr, "public.patients.ssn")
	diag := mustCipher(t, kr, "public.patients.diagnosis")
	secret := []byte("SECRET-PLAINTEXT-CANARY")

	// Another keyset for the same key name: another instance's keys.
	otherCfg, _ := setup(t, testPHI)
	otherSSN := mustCipher(t, openRing(t, otherCfg), "public.patients.ssn")

	// The same keyset bound to another key name: a value copied to a
	// column with another identity must not decrypt (associated data).
	l, err := readKeyset(cfg.Keys.Dir, ColumnKey("public.patients.ssn"), mustKEK(t, cfg.Keys.KEK))
	if err != nil {
		t.Fatal(err)
	}
	l.ref = ColumnKey("public.patients.ssn_copy")
	wrongAD, err := newCipher(l, []string{"public.patients.ssn_copy"})
	if err != nil {
		t.Fatal(err)
	}

	tamper := func(i int) []byte {
		env := mustEncrypt(t, ssn, secret)
		if i < 0 {
			i += len(env)
		}
		env[i] ^= 0x01
		return env
	}
	encWith := func(c *Cipher) []byte { return mustEncrypt(t, c, secret) }
	tests := []struct {
		name   string
		c      *Cipher
		in     []byte
		reason DecryptFailure
		idIn   bool // the message names the key id
	}{
		{"plaintext bytes are not an envelope", ssn, secret, NotEnvelope, false},
		{"an empty value is not an envelope", ssn, nil, NotEnvelope, false},
		{"a tampered header is not an envelope", ssn, tamper(0), NotEnvelope, false},
		{"a tampered key id names an unknown key", ssn, tamper(HeaderLen + 4), UnknownKey, true},
		{"a tampered first payload byte does not authenticate", ssn, tamper(HeaderLen + tinkPrefixLen), Unauthentic, true},
		{"a tampered last byte does not authenticate", ssn, tamper(-1), Unauthentic, true},
		{"a value under another column's key name does not authenticate", wrongAD, encWith(ssn), Unauthentic, true},
		{"a value from another keyset names an unknown key id", ssn, encWith(otherSSN), UnknownKey, true},
		{"a deterministic value given to a randomized column fails", diag, encWith(ssn), UnknownKey, true},
		{"a randomized value under another column's keyset fails", ssn, encWith(diag), UnknownKey, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := tt.c.Decrypt(tt.in)
			de := decryptErr(t, err)
			if pt != nil {
				t.Fatalf("Decrypt returned %d bytes with its error", len(pt))
			}
			if de.Reason != tt.reason {
				t.Fatalf("reason %d, want %d (%v)", de.Reason, tt.reason, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.c.Name()) {
				t.Errorf("message %q does not name the key %s", msg, tt.c.Name())
			}
			if id, ok := EnvelopeKeyID(tt.in); tt.idIn && (!ok || !strings.Contains(msg, strconv.FormatUint(uint64(id), 10))) {
				t.Errorf("message %q does not name key id %d", msg, id)
			}
			if strings.Contains(msg, string(secret)) || strings.Contains(pgerr.As(err).Hint, string(secret)) {
				t.Errorf("error leaks the plaintext: %q", msg)
			}
		})
	}
}

func mustKEK(t testing.TB, uri string) tink.AEAD {
	t.Helper()
	k, err := OpenKEK(context.Background(), uri, Env{})
	if err != nil {
		t.Fatal(err)
	}
	return k.aead
}

func TestKeyringUnknownKeyName(t *testing.T) {
	kr, _ := testRing(t)
	if got := strings.Join(kr.KeyNames(), ","); got != "public.patients.diagnosis,public.patients.ssn,visit notes/v1" {
		t.Fatalf("KeyNames = %s", got)
	}
	for name, call := range map[string]func() error{
		"Cipher":  func() error { _, err := kr.Cipher("public.patients.name"); return err },
		"Encrypt": func() error { _, err := kr.Encrypt("public.patients.name", []byte("x")); return err },
		"Decrypt": func() error { _, err := kr.Decrypt("public.patients.name", []byte("x")); return err },
	} {
		err := call()
		if err == nil || pgerr.CodeOf(err) != pgerr.Internal || !strings.Contains(err.Error(), "public.patients.name") {
			t.Errorf("%s of an unknown key name: %v", name, err)
		}
	}
}

func TestAppendEncryptAppends(t *testing.T) {
	cfg, _ := setup(t, testPHI)
	c := mustCipher(t, openRing(t, cfg), "public.patients.ssn")
	buf := []byte("D\x00\x00")
	out, err := c.AppendEncrypt(buf, []byte("123-45-6789"))
	if err != nil {
		t.Fatal(err)
	}
	if string(out[:3]) != "D\x00\x00" {
		t.Fatal("AppendEncrypt overwrote dst")
	}
	want, _ := c.Encrypt([]byte("123-45-6789"))
	if !bytes.Equal(out[3:], want) {
		t.Fatal("AppendEncrypt appended something else than Encrypt returns")
	}
}
