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
	cfg, _ := setup(b, testPHI)
	kr := openRing(b, cfg)
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
			env, err := c.Encrypt(pt)
			if err != nil {
				b.Fatal(err)
			}
			raw := env[HeaderLen:]
			name := fmt.Sprintf("%s/%dB", mode, size)
			b.Run(name+"/encrypt/tink", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := rawEnc(pt); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/encrypt/phiproxy", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := c.Encrypt(pt); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/append-encrypt/phiproxy", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				buf := make([]byte, 0, 2*size+64)
				for b.Loop() {
					if _, err := c.AppendEncrypt(buf[:0], pt); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/decrypt/tink", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := rawDec(raw); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/decrypt/phiproxy", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := c.Decrypt(env); err != nil {
						b.Fatal(err)
					}
				}
			})
			// What an AppendDecrypt(dst, envelope) would cost: Tink has no
			// API that decrypts into a caller's buffer (AES-GCM and AES-SIV
			// both return a fresh slice), so it could only be Decrypt plus a
			// copy into dst: never fewer allocations, always more bytes
			// moved. This is why Cipher has no AppendDecrypt (see
			// Cipher.Decrypt).
			b.Run(name+"/append-decrypt/decrypt+copy", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				buf := make([]byte, 0, size+64)
				for b.Loop() {
					pt, err := c.Decrypt(env)
					if err != nil {
						b.Fatal(err)
					}
					buf = append(buf[:0], pt...)
				}
			})
		}
	}
}

// BenchmarkKeyringLookup is the per-value cost of going through the
// Keyring (atomic load + map lookup) rather than holding a *Cipher.
func BenchmarkKeyringLookup(b *testing.B) {
	cfg, _ := setup(b, testPHI)
	kr := openRing(b, cfg)
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
