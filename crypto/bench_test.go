package crypto

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkCipher compares the column cipher with the raw Tink primitive it
// wraps (same keyset, same associated data) in one run. docs/performance.md
// records the table.
func BenchmarkCipher(b *testing.B) {
	kr, _ := testRing(b)
	for _, mode := range []string{"randomized", "deterministic"} {
		key := "public.patients.diagnosis"
		if mode == "deterministic" {
			key = "public.patients.ssn"
		}
		c := mustCipher(b, kr, key)
		rawEnc, rawDec := func(pt []byte) ([]byte, error) { return c.aead.Encrypt(pt, c.ad) },
			func(ct []byte) ([]byte, error) { return c.aead.Decrypt(ct, c.ad) }
		if c.daead != nil {
			rawEnc, rawDec = func(pt []byte) ([]byte, error) { return c.daead.EncryptDeterministically(pt, c.ad) },
				func(ct []byte) ([]byte, error) { return c.daead.DecryptDeterministically(ct, c.ad) }
		}
		for _, size := range []int{16, 256, 4096} {
			pt := bytes.Repeat([]byte{'x'}, size)
			env := mustEncrypt(b, c, pt)
			raw := env[HeaderLen:]
			encBuf := make([]byte, 0, 2*size+64)
			decBuf := make([]byte, 0, size+64)
			ops := []struct {
				name string
				op   func() error
			}{
				{"encrypt/tink", func() error { _, err := rawEnc(pt); return err }},
				{"encrypt/phiproxy", func() error { _, err := c.Encrypt(pt); return err }},
				{"append-encrypt/phiproxy", func() error { _, err := c.AppendEncrypt(encBuf[:0], pt); return err }},
				{"decrypt/tink", func() error { _, err := rawDec(raw); return err }},
				{"decrypt/phiproxy", func() error { _, err := c.Decrypt(env); return err }},
				// What an AppendDecrypt(dst, envelope) would cost: Tink has
				// no API that decrypts into a caller's buffer (AES-GCM and
				// AES-SIV both return a fresh slice), so it could only be
				// Decrypt plus a copy into dst: never fewer allocations,
				// always more bytes moved. This is why Cipher has no
				// AppendDecrypt (see Cipher.Decrypt).
				{"append-decrypt/decrypt+copy", func() error {
					pt, err := c.Decrypt(env)
					decBuf = append(decBuf[:0], pt...)
					return err
				}},
			}
			for _, o := range ops {
				b.Run(fmt.Sprintf("%s/%dB/%s", mode, size, o.name), func(b *testing.B) {
					b.ReportAllocs()
					b.SetBytes(int64(size))
					for b.Loop() {
						if err := o.op(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkKeyringLookup is the per-value cost of going through the
// Keyring (atomic load + map lookup) rather than holding a *Cipher.
func BenchmarkKeyringLookup(b *testing.B) {
	kr, _ := testRing(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Cipher("public.patients.ssn"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIsEnvelope(b *testing.B) {
	v := append(KeyPrefix(42), make([]byte, 40)...)
	t := []byte(`\x504801012a`)
	b.ReportAllocs()
	for b.Loop() {
		if !IsEnvelope(v) || !IsTextEnvelope(t) {
			b.Fatal("not an envelope")
		}
	}
}
