package crypto

import (
	"bytes"
	"errors"
	"testing"

	"github.com/phiproxy/phiproxy/pgerr"
)

// fuzzCiphers makes one deterministic and one randomized cipher per fuzz
// target (keyset generation is too slow to do per input).
func fuzzCiphers(f *testing.F) (det, rnd *Cipher) {
	kr, _ := testRing(f)
	return mustCipher(f, kr, "public.patients.ssn"), mustCipher(f, kr, "public.patients.diagnosis")
}

// fuzzEncrypt encrypts x with det or rnd as deterministic says, failing
// t on an error, and returns the cipher it used and the envelope.
func fuzzEncrypt(t *testing.T, det, rnd *Cipher, deterministic bool, x []byte) (*Cipher, []byte) {
	t.Helper()
	c := rnd
	if deterministic {
		c = det
	}
	return c, mustEncrypt(t, c, x)
}

// FuzzRoundTrip: Decrypt(Encrypt(x)) == x in both modes, and the
// deterministic mode is deterministic.
func FuzzRoundTrip(f *testing.F) {
	det, rnd := fuzzCiphers(f)
	f.Add([]byte(""), true)
	f.Add([]byte("123-45-6789"), true)
	f.Add([]byte("PH\x01\x01\x00\x00\x00\x00"), false)
	f.Fuzz(func(t *testing.T, x []byte, deterministic bool) {
		c, env := fuzzEncrypt(t, det, rnd, deterministic, x)
		if !IsEnvelope(env) {
			t.Fatal("Encrypt made no envelope")
		}
		got, err := c.Decrypt(env)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, x) {
			t.Fatal("Decrypt(Encrypt(x)) != x")
		}
		again, err := c.Encrypt(x)
		if err != nil {
			t.Fatal(err)
		}
		if deterministic != bytes.Equal(env, again) {
			t.Fatalf("deterministic=%v but equal ciphertexts=%v", deterministic, !deterministic)
		}
	})
}

// FuzzDecrypt: arbitrary bytes never panic the envelope checks or Decrypt,
// the checks agree with each other, and failures are typed.
func FuzzDecrypt(f *testing.F) {
	det, rnd := fuzzCiphers(f)
	f.Add([]byte(nil))
	f.Add([]byte(`\x504801`))
	f.Add(append(KeyPrefix(det.PrimaryKeyID()), make([]byte, 16)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		isEnv := IsEnvelope(b)
		if isEnv && !HasEnvelopeHeader(b) {
			t.Fatal("IsEnvelope without the header")
		}
		if _, ok := EnvelopeKeyID(b); ok != isEnv {
			t.Fatalf("EnvelopeKeyID ok=%v, IsEnvelope=%v", ok, isEnv)
		}
		_ = IsTextEnvelope(b)
		for _, c := range []*Cipher{det, rnd} {
			pt, err := c.Decrypt(b)
			if err == nil {
				// Only a forgery could get here; make sure it is not one.
				if c == det {
					if again, _ := c.Encrypt(pt); !bytes.Equal(again, b) {
						t.Fatal("Decrypt accepted a value its key did not make")
					}
				}
				continue
			}
			var de *DecryptError
			if pgerr.CodeOf(err) != pgerr.DataCorrupted || !errors.As(err, &de) {
				t.Fatalf("untyped error %v", err)
			}
			if !isEnv && de.Reason != NotEnvelope {
				t.Fatalf("non-envelope failed with reason %d", de.Reason)
			}
		}
	})
}

// FuzzTamper: flipping any bits of any byte of a valid envelope makes
// Decrypt fail.
func FuzzTamper(f *testing.F) {
	det, rnd := fuzzCiphers(f)
	f.Add([]byte("123-45-6789"), uint(0), byte(1), true)
	f.Add([]byte("diagnosis"), uint(40), byte(0x80), false)
	f.Fuzz(func(t *testing.T, x []byte, pos uint, mask byte, deterministic bool) {
		if mask == 0 {
			return
		}
		c, env := fuzzEncrypt(t, det, rnd, deterministic, x)
		env[pos%uint(len(env))] ^= mask
		if _, err := c.Decrypt(env); err == nil {
			t.Fatalf("a value altered at byte %d decrypted", pos%uint(len(env)))
		}
	})
}
