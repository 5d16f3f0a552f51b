package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgerr"
)

// RFC 7677 §3 test vector (user "user", password "pencil").
const (
	rfcPassword    = "pencil"
	rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcSalt        = "W22ZaJ0SNY7soEsUEjb6gQ=="
	rfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// scramVerifier builds a rolpassword the way PostgreSQL's
// scram_build_secret does.
func scramVerifier(t testing.TB, password string, salt []byte, iter int) (secret string, clientKey []byte) {
	t.Helper()
	sp, err := pbkdf2.Key(sha256.New, password, salt, iter, keyLen)
	if err != nil {
		t.Fatal(err)
	}
	clientKey = hmacSHA256(sp, "Client Key")
	stored := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(sp, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, b64(salt), b64(stored[:]), b64(serverKey)), clientKey
}

func rfcSecret(t *testing.T) (scramSecret, []byte) {
	salt, _ := base64.StdEncoding.DecodeString(rfcSalt)
	s, ck := scramVerifier(t, rfcPassword, salt, 4096)
	sec, ok := parseSCRAMSecret(s)
	if !ok {
		t.Fatalf("parseSCRAMSecret(%q) failed", s)
	}
	return sec, ck
}

func TestServerExchangeRecoversClientKeyFromRFC7677Vector(t *testing.T) {
	sec, clientKey := rfcSecret(t)
	x := &serverExchange{user: "user", secret: sec, serverNonce: rfcServerNonce}
	sf, err := x.handleClientFirst(rfcClientFirst)
	if err != nil {
		t.Fatal(err)
	}
	if sf != rfcServerFirst {
		t.Fatalf("server-first = %q, want %q", sf, rfcServerFirst)
	}
	final, keys, err := x.handleClientFinal(rfcClientFinal)
	if err != nil {
		t.Fatal(err)
	}
	if final != rfcServerFinal {
		t.Errorf("server-final = %q, want %q", final, rfcServerFinal)
	}
	if !bytes.Equal(keys.clientKey, clientKey) {
		t.Error("recovered ClientKey differs from HMAC(SaltedPassword, \"Client Key\")")
	}
}

func TestClientExchangeProvesWithClientKeyAlone(t *testing.T) {
	sec, clientKey := rfcSecret(t)
	x := &clientExchange{keys: &scramKeys{clientKey: clientKey, storedKey: sec.storedKey, serverKey: sec.serverKey}, gs2: "n,,", nonce: rfcClientNonce}
	x.firstMessage()
	x.clientFirstBare = strings.TrimPrefix(rfcClientFirst, "n,,") // the vector names its user
	final, err := x.finalMessage(rfcServerFirst)
	if err != nil {
		t.Fatal(err)
	}
	if final != rfcClientFinal {
		t.Fatalf("client-final = %q, want %q", final, rfcClientFinal)
	}
	if err := x.verifyServerFinal(rfcServerFinal); err != nil {
		t.Fatal(err)
	}
	if err := x.verifyServerFinal("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32))); err == nil {
		t.Fatal("a forged server signature was accepted")
	}
}

func TestServerExchangeRefusals(t *testing.T) {
	sec, _ := rfcSecret(t)
	cb := []byte("0123456789abcdef0123456789abcdef")
	cases := []struct {
		name        string
		plus        bool
		cbData      []byte
		doomed      bool
		first       string
		final       string
		code        pgerr.Code
		message     string
		failAtFirst bool
	}{
		{name: "a wrong proof fails as a wrong password", first: rfcClientFirst,
			final: strings.Replace(rfcClientFinal, "p=dHzb", "p=AAAA", 1), code: pgerr.InvalidPassword, message: `password authentication failed for user "alice"`},
		{name: "a doomed exchange fails even with the right proof", doomed: true, first: rfcClientFirst, final: rfcClientFinal,
			code: pgerr.InvalidPassword, message: `password authentication failed for user "alice"`},
		{name: "y when -PLUS was offered is a negotiation error", cbData: cb, first: "y,,n=,r=abc", failAtFirst: true,
			code: pgerr.InvalidAuthorizationSpec, message: "SCRAM channel binding negotiation error"},
		{name: "p without -PLUS is malformed", first: "p=tls-server-end-point,,n=,r=abc", failAtFirst: true,
			code: pgerr.ProtocolViolation, message: "malformed SCRAM message"},
		{name: "n with -PLUS selected is malformed", plus: true, cbData: cb, first: "n,,n=,r=abc", failAtFirst: true,
			code: pgerr.ProtocolViolation, message: "malformed SCRAM message"},
		{name: "an unknown binding type is refused", plus: true, cbData: cb, first: "p=tls-unique,,n=,r=abc", failAtFirst: true,
			code: pgerr.ProtocolViolation, message: `unsupported SCRAM channel-binding type "tls-unique"`},
		{name: "an authzid is refused", first: "n,a=bob,n=,r=abc", failAtFirst: true,
			code: pgerr.FeatureNotSupported, message: "client uses authorization identity, but it is not supported"},
		{name: "a wrong binding is refused", plus: true, cbData: cb, first: "p=tls-server-end-point,,n=,r=" + rfcClientNonce,
			final: "c=" + base64.StdEncoding.EncodeToString([]byte("p=tls-server-end-point,,wrong")) + ",r=" + rfcClientNonce + rfcServerNonce + ",p=AAAA",
			code:  pgerr.InvalidAuthorizationSpec, message: "SCRAM channel binding check failed"},
		{name: "a changed nonce is refused", first: rfcClientFirst, final: strings.Replace(rfcClientFinal, "hvYD", "hvYE", 1),
			code: pgerr.ProtocolViolation, message: "invalid SCRAM response"},
		{name: "y then biws is refused", first: "y,,n=,r=" + rfcClientNonce, final: rfcClientFinal,
			code: pgerr.ProtocolViolation, message: "unexpected SCRAM channel-binding attribute in client-final-message"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := &serverExchange{user: "alice", secret: sec, serverNonce: rfcServerNonce, plus: tc.plus, cbData: tc.cbData, doomed: tc.doomed}
			_, err := x.handleClientFirst(tc.first)
			if !tc.failAtFirst {
				if err != nil {
					t.Fatal(err)
				}
				_, _, err = x.handleClientFinal(tc.final)
			}
			pe := pgerr.As(err)
			if pe == nil {
				t.Fatalf("err = %v, want a *pgerr.Error", err)
			}
			if pe.Code != tc.code || pe.Message != tc.message || pe.Severity != pgerr.SeverityFatal {
				t.Fatalf("got %s %s %q, want FATAL %s %q", pe.Severity, pe.Code, pe.Message, tc.code, tc.message)
			}
		})
	}
}

func TestServerExchangeAcceptsChannelBinding(t *testing.T) {
	sec, clientKey := rfcSecret(t)
	cb := sha256.Sum256([]byte("certificate"))
	srv := &serverExchange{user: "u", secret: sec, plus: true, cbData: cb[:]}
	cli := &clientExchange{keys: &scramKeys{clientKey: clientKey, storedKey: sec.storedKey, serverKey: sec.serverKey},
		gs2: "p=tls-server-end-point,,", cbData: cb[:]}
	sf, err := srv.handleClientFirst(cli.firstMessage())
	if err != nil {
		t.Fatal(err)
	}
	cf, err := cli.finalMessage(sf)
	if err != nil {
		t.Fatal(err)
	}
	final, keys, err := srv.handleClientFinal(cf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(keys.clientKey, clientKey) {
		t.Fatal("wrong ClientKey recovered")
	}
	if err := cli.verifyServerFinal(final); err != nil {
		t.Fatal(err)
	}
}

func TestMockSecretIsStablePerUserAndSecret(t *testing.T) {
	k1, k2 := []byte("one"), []byte("two")
	a, b := mockSecret(k1, "ghost"), mockSecret(k1, "ghost")
	if !bytes.Equal(a.salt, b.salt) || a.iterations != mockIterations || len(a.salt) != mockSaltLen {
		t.Fatal("mock salt for one user and secret is not stable")
	}
	if bytes.Equal(a.salt, mockSecret(k1, "other").salt) || bytes.Equal(a.salt, mockSecret(k2, "ghost").salt) {
		t.Fatal("mock salt does not depend on user and secret")
	}
	if bytes.Equal(a.storedKey, b.storedKey) {
		t.Fatal("mock keys must be random")
	}
}

func TestParseSecrets(t *testing.T) {
	good, _ := scramVerifier(t, "pw", []byte("0123456789abcdef"), 4096)
	for _, s := range []string{"", "md5", "SCRAM-SHA-256$", "SCRAM-SHA-256$x:c2FsdA==$a:b", "plaintext", good[:len(good)-4]} {
		if _, ok := parseSCRAMSecret(s); ok {
			t.Errorf("parseSCRAMSecret(%q) accepted", s)
		}
	}
	if _, ok := parseSCRAMSecret(good); !ok {
		t.Errorf("parseSCRAMSecret(%q) refused", good)
	}
	if !isMD5Secret("md5"+strings.Repeat("0a", 16)) || isMD5Secret("md5xyz") || isMD5Secret(good) {
		t.Error("isMD5Secret misclassifies")
	}
}

func TestMD5ResponseMatchesLibpq(t *testing.T) {
	// libpq: "md5" + md5hex(md5hex(password + user) + salt).
	inner := md5.Sum([]byte("secret" + "bob"))
	stored := "md5" + hex.EncodeToString(inner[:])
	salt := [4]byte{1, 2, 3, 4}
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
	if got, want := md5Response(stored, salt), "md5"+hex.EncodeToString(outer[:]); got != want {
		t.Fatalf("md5Response = %q, want %q", got, want)
	}
}

func TestTLSServerEndPointFollowsRFC5929(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name string
		alg  x509.SignatureAlgorithm
		key  any
		hash func([]byte) []byte
	}{
		{"ECDSA-SHA256 hashes with SHA-256", x509.ECDSAWithSHA256, ecKey, func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }},
		{"ECDSA-SHA384 hashes with SHA-384", x509.ECDSAWithSHA384, ecKey, func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }},
		{"RSA-SHA512 hashes with SHA-512", x509.SHA512WithRSA, rsaKey, func(b []byte) []byte { s := sha512.Sum512(b); return s[:] }},
		{"RSA-PSS has no binding, as in PostgreSQL", x509.SHA256WithRSAPSS, rsaKey, nil},
		{"Ed25519 has no binding", x509.PureEd25519, edKey, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"},
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), SignatureAlgorithm: tc.alg}
			pub := tc.key.(crypto.Signer).Public()
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			got, err := TLSServerEndPoint(cert)
			if tc.hash == nil {
				if err == nil {
					t.Fatal("binding computed for an algorithm without one")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.hash(der)) {
				t.Fatal("wrong binding data")
			}
		})
	}
}

func TestCredentialsAreRedacted(t *testing.T) {
	sec, ck := rfcSecret(t)
	c := &Credentials{role: "alice", scram: &scramKeys{clientKey: ck, storedKey: sec.storedKey, serverKey: sec.serverKey}}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "creds", c, "verifier", &Verifier{Secret: "md5secretsecret"})
	out := buf.String() + fmt.Sprintf("%v %+v %#v %s", c, c, c, c)
	for _, leak := range []string{base64.StdEncoding.EncodeToString(ck), hex.EncodeToString(ck), string(ck), "md5secretsecret"} {
		if strings.Contains(out, leak) {
			t.Fatalf("key material in output: %s", out)
		}
	}
	if !strings.Contains(buf.String(), redacted) {
		t.Fatalf("no REDACTED in %s", buf.String())
	}
}
