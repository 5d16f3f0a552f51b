package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// SASL mechanism names as PostgreSQL spells them.
const (
	mechSCRAM     = "SCRAM-SHA-256"
	mechSCRAMPlus = "SCRAM-SHA-256-PLUS"
)

const (
	// cbType is the only channel-binding type PostgreSQL supports.
	cbType = "tls-server-end-point"
	// keyLen is the SHA-256 output size, the length of every SCRAM key.
	keyLen = sha256.Size
	// rawNonceLen is PostgreSQL's SCRAM_RAW_NONCE_LEN.
	rawNonceLen = 18
	// mockSaltLen and mockIterations are PostgreSQL 15's defaults
	// (SCRAM_DEFAULT_SALT_LEN, SCRAM_DEFAULT_ITERATIONS), so a mock secret
	// looks like one made by CREATE ROLE ... PASSWORD.
	mockSaltLen    = 16
	mockIterations = 4096
)

// scramSecret is a parsed pg_authid.rolpassword of the form
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
type scramSecret struct {
	iterations int
	salt       []byte
	storedKey  []byte
	serverKey  []byte
}

// parseSCRAMSecret parses a SCRAM-SHA-256 verifier; ok is false if s is not
// one (an md5 hash, a plaintext password, or malformed).
func parseSCRAMSecret(s string) (sec scramSecret, ok bool) {
	rest, found := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !found {
		return sec, false
	}
	params, keys, found := strings.Cut(rest, "$")
	if !found {
		return sec, false
	}
	iter, salt, found := strings.Cut(params, ":")
	if !found {
		return sec, false
	}
	stored, server, found := strings.Cut(keys, ":")
	if !found {
		return sec, false
	}
	n, err := strconv.Atoi(iter)
	if err != nil || n <= 0 {
		return sec, false
	}
	sec.iterations = n
	if sec.salt, err = base64.StdEncoding.DecodeString(salt); err != nil || len(sec.salt) == 0 {
		return sec, false
	}
	if sec.storedKey, err = base64.StdEncoding.DecodeString(stored); err != nil || len(sec.storedKey) != keyLen {
		return sec, false
	}
	if sec.serverKey, err = base64.StdEncoding.DecodeString(server); err != nil || len(sec.serverKey) != keyLen {
		return sec, false
	}
	return sec, true
}

// isMD5Secret reports whether s is an md5 verifier: "md5" + 32 hex digits.
func isMD5Secret(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for _, c := range s[3:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// mockSecret builds the verifier used for a role that does not exist, has
// no password or has expired. Like PostgreSQL's scram_mock_salt, the salt is
// a deterministic function of the user name and a secret, so repeated
// attempts see the same salt, as for a real role; the keys are random, so
// no proof can match.
func mockSecret(key []byte, user string) scramSecret {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(user))
	sec := scramSecret{iterations: mockIterations, salt: m.Sum(nil)[:mockSaltLen]}
	sec.storedKey = randomBytes(keyLen)
	sec.serverKey = randomBytes(keyLen)
	return sec
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("BUG: crypto/rand failed: " + err.Error())
	}
	return b
}

func newNonce() string {
	return base64.StdEncoding.EncodeToString(randomBytes(rawNonceLen))
}

func hmacSHA256(key []byte, msg ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, s := range msg {
		m.Write([]byte(s))
	}
	return m.Sum(nil)
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	subtle.XORBytes(out, a, b)
	return out
}

// TLSServerEndPoint returns the tls-server-end-point channel-binding data
// (RFC 5929 §4.1) for cert: its DER hashed with SHA-256 when it is signed
// with MD5, SHA-1 or SHA-256, else with its signature's hash. It returns an
// error for signature algorithms for which PostgreSQL and libpq cannot
// compute the binding either (RSA-PSS, Ed25519); without binding data the
// proxy does not offer SCRAM-SHA-256-PLUS.
func TLSServerEndPoint(cert *x509.Certificate) ([]byte, error) {
	if cert == nil {
		return nil, errors.New("auth: no certificate for channel binding")
	}
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("auth: tls-server-end-point channel binding is undefined for certificate signature algorithm %v", cert.SignatureAlgorithm)
	}
	h.Write(cert.Raw)
	return h.Sum(nil), nil
}

// errMalformed is a parse failure of a SCRAM message; the server side turns
// it into PostgreSQL's "malformed SCRAM message" with the detail.
type errMalformed struct{ detail string }

func (e *errMalformed) Error() string { return "malformed SCRAM message: " + e.detail }

// readAttr reads "<attr>=<value>" from the front of s and returns the value
// and the remainder after the following comma (or end).
func readAttr(s string, attr byte) (value, rest string, err error) {
	if len(s) < 2 || s[0] != attr || s[1] != '=' {
		got := "end of input"
		if len(s) > 0 {
			got = fmt.Sprintf("%q", s[:1])
		}
		return "", "", &errMalformed{fmt.Sprintf("Expected attribute %q but found %s.", attr, got)}
	}
	value, rest, _ = strings.Cut(s[2:], ",")
	return value, rest, nil
}

// printableNonce reports whether every byte of s is a printable ASCII
// character other than ',', as RFC 5802 requires of a nonce.
func printableNonce(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e || s[i] == ',' {
			return false
		}
	}
	return s != ""
}
