package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/phiproxy/phiproxy/pgerr"
)

// This file holds the pure SCRAM message handling of both legs: no I/O, the
// nonces are fields so tests can fix them (RFC 7677's test vector).

// scramKeys is what a successful client exchange leaves behind: enough to
// prove knowledge of the password to PostgreSQL without having it.
type scramKeys struct {
	clientKey  []byte
	storedKey  []byte
	serverKey  []byte
	salt       []byte
	iterations int
}

// serverExchange is the proxy's side of a SCRAM exchange with a client. Its
// checks and their order follow PostgreSQL 15's auth-scram.c so that a
// client sees the same errors as from PostgreSQL.
type serverExchange struct {
	user   string
	secret scramSecret
	// doomed makes the exchange fail at the proof whatever the client sends
	// (unknown role, no password, expired, non-SCRAM verifier).
	doomed bool
	// plus is true when the client selected SCRAM-SHA-256-PLUS; cbData is
	// the binding data of the proxy's certificate, nil when -PLUS was not
	// offered.
	plus   bool
	cbData []byte
	// serverNonce is the proxy's part of the nonce (random unless a test
	// sets it).
	serverNonce string

	cbFlag          byte
	clientFirstBare string
	serverFirst     string
	nonce           string
}

func malformed(detail string) *pgerr.Error {
	return pgerr.Fatal(pgerr.ProtocolViolation, "malformed SCRAM message").WithDetail(detail)
}

func passwordFailed(user string) *pgerr.Error {
	return pgerr.Fatal(pgerr.InvalidPassword, `password authentication failed for user "`+user+`"`)
}

func asMalformed(err error) *pgerr.Error {
	if m, ok := err.(*errMalformed); ok {
		return malformed(m.detail)
	}
	return malformed(err.Error())
}

// handleClientFirst parses client-first-message and returns
// server-first-message.
func (x *serverExchange) handleClientFirst(msg string) (string, error) {
	if msg == "" {
		return "", malformed("The message is empty.")
	}
	if strings.IndexByte(msg, 0) >= 0 {
		return "", malformed("Message length does not match input length.")
	}
	in := msg
	x.cbFlag = in[0]
	switch in[0] {
	case 'n', 'y':
		if x.plus {
			return "", malformed("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.")
		}
		if in[0] == 'y' && x.cbData != nil {
			return "", pgerr.Fatal(pgerr.InvalidAuthorizationSpec, "SCRAM channel binding negotiation error").
				WithDetail("The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.")
		}
		if len(in) < 2 || in[1] != ',' {
			return "", malformed("Comma expected, but found character.")
		}
		in = in[2:]
	case 'p':
		if !x.plus {
			return "", malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
		}
		typ, rest, err := readAttr(in, 'p')
		if err != nil {
			return "", asMalformed(err)
		}
		if typ != cbType {
			return "", pgerr.Fatal(pgerr.ProtocolViolation, `unsupported SCRAM channel-binding type "`+sanitize(typ)+`"`)
		}
		in = rest
	default:
		return "", malformed("Unexpected channel-binding flag.")
	}
	if strings.HasPrefix(in, "a") {
		return "", pgerr.Fatal(pgerr.FeatureNotSupported, "client uses authorization identity, but it is not supported")
	}
	if !strings.HasPrefix(in, ",") {
		return "", malformed("Unexpected attribute in client-first-message.")
	}
	in = in[1:]
	x.clientFirstBare = in
	if strings.HasPrefix(in, "m") {
		return "", pgerr.Fatal(pgerr.FeatureNotSupported, "client requires an unsupported SCRAM extension")
	}
	// The user name in the SCRAM message is ignored, as PostgreSQL ignores
	// it: the StartupMessage's user is the one authenticated.
	_, in, err := readAttr(in, 'n')
	if err != nil {
		return "", asMalformed(err)
	}
	clientNonce, _, err := readAttr(in, 'r')
	if err != nil {
		return "", asMalformed(err)
	}
	if !printableNonce(clientNonce) {
		return "", pgerr.Fatal(pgerr.ProtocolViolation, "non-printable characters in SCRAM nonce")
	}
	if x.serverNonce == "" {
		x.serverNonce = newNonce()
	}
	x.nonce = clientNonce + x.serverNonce
	x.serverFirst = "r=" + x.nonce + ",s=" + base64.StdEncoding.EncodeToString(x.secret.salt) +
		",i=" + strconv.Itoa(x.secret.iterations)
	return x.serverFirst, nil
}

// handleClientFinal checks client-final-message and, when the proof is
// right, returns server-final-message and the recovered keys.
func (x *serverExchange) handleClientFinal(msg string) (string, *scramKeys, error) {
	if msg == "" {
		return "", nil, malformed("The message is empty.")
	}
	if strings.IndexByte(msg, 0) >= 0 {
		return "", nil, malformed("Message length does not match input length.")
	}
	cb, in, err := readAttr(msg, 'c')
	if err != nil {
		return "", nil, asMalformed(err)
	}
	if x.plus {
		want := base64.StdEncoding.EncodeToString(append([]byte("p="+cbType+",,"), x.cbData...))
		if subtle.ConstantTimeCompare([]byte(cb), []byte(want)) != 1 {
			return "", nil, pgerr.Fatal(pgerr.InvalidAuthorizationSpec, "SCRAM channel binding check failed")
		}
	} else if !(cb == "biws" && x.cbFlag == 'n') && !(cb == "eSws" && x.cbFlag == 'y') {
		return "", nil, pgerr.Fatal(pgerr.ProtocolViolation, "unexpected SCRAM channel-binding attribute in client-final-message")
	}
	finalNonce, in, err := readAttr(in, 'r')
	if err != nil {
		return "", nil, asMalformed(err)
	}
	// Skip extensions up to the proof, which must come last.
	withoutProof := ""
	var proofB64 string
	for {
		if len(in) < 2 || in[1] != '=' || !isAlpha(in[0]) {
			return "", nil, malformed("Attribute expected, but found invalid character or end of string.")
		}
		if in[0] == 'p' {
			withoutProof = msg[:len(msg)-len(in)-1]
			proofB64 = in[2:]
			if strings.Contains(proofB64, ",") {
				return "", nil, malformed("Garbage found at the end of client-final-message.")
			}
			break
		}
		_, after, found := strings.Cut(in, ",")
		if !found {
			return "", nil, malformed("Attribute expected, but found end of string.")
		}
		in = after
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != keyLen {
		return "", nil, malformed("Malformed proof in client-final-message.")
	}
	if finalNonce != x.nonce {
		return "", nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid SCRAM response").WithDetail("Nonce does not match.")
	}
	authMessage := x.clientFirstBare + "," + x.serverFirst + "," + withoutProof
	clientKey := xorBytes(proof, hmacSHA256(x.secret.storedKey, authMessage))
	stored := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(stored[:], x.secret.storedKey) != 1 || x.doomed {
		return "", nil, passwordFailed(x.user)
	}
	serverSig := hmacSHA256(x.secret.serverKey, authMessage)
	keys := &scramKeys{clientKey: clientKey, storedKey: x.secret.storedKey, serverKey: x.secret.serverKey,
		salt: x.secret.salt, iterations: x.secret.iterations}
	return "v=" + base64.StdEncoding.EncodeToString(serverSig), keys, nil
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// sanitize keeps a client-supplied string printable and short for an error
// message, as PostgreSQL's sanitize_str does.
func sanitize(s string) string {
	if len(s) > 30 {
		s = s[:30]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x21 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// clientExchange is the proxy's side of a SCRAM exchange with PostgreSQL,
// proving knowledge of the password with the ClientKey alone.
type clientExchange struct {
	keys *scramKeys
	// gs2 is the GS2 header: "n,,", "y,," or "p=tls-server-end-point,,".
	gs2    string
	cbData []byte
	nonce  string

	clientFirstBare string
	authMessage     string
}

// firstMessage returns client-first-message. Like libpq it sends an empty
// user name: PostgreSQL takes the user from the StartupMessage.
func (x *clientExchange) firstMessage() string {
	if x.nonce == "" {
		x.nonce = newNonce()
	}
	x.clientFirstBare = "n=,r=" + x.nonce
	return x.gs2 + x.clientFirstBare
}

// finalMessage answers server-first-message with client-final-message.
func (x *clientExchange) finalMessage(serverFirst string) (string, error) {
	nonce, rest, err := readAttr(serverFirst, 'r')
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(nonce, x.nonce) || len(nonce) == len(x.nonce) {
		return "", fmt.Errorf("auth: upstream SCRAM nonce does not extend ours")
	}
	// The salt and iteration count are those of the verifier the client's
	// proof was checked against, unless the password changed in between; a
	// stale ClientKey is then refused by PostgreSQL itself. Only the shape
	// is checked here.
	_, rest, err = readAttr(rest, 's')
	if err != nil {
		return "", err
	}
	if _, _, err = readAttr(rest, 'i'); err != nil {
		return "", err
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString(append([]byte(x.gs2), x.cbData...)) + ",r=" + nonce
	x.authMessage = x.clientFirstBare + "," + serverFirst + "," + withoutProof
	proof := xorBytes(x.keys.clientKey, hmacSHA256(x.keys.storedKey, x.authMessage))
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

// verifyServerFinal checks server-final-message's signature with ServerKey,
// proving the upstream knows the verifier too.
func (x *clientExchange) verifyServerFinal(serverFinal string) error {
	if e, ok := strings.CutPrefix(serverFinal, "e="); ok {
		return fmt.Errorf("auth: upstream SCRAM error %q", sanitize(e))
	}
	v, _, err := readAttr(serverFinal, 'v')
	if err != nil {
		return err
	}
	got, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return fmt.Errorf("auth: malformed upstream server signature")
	}
	if subtle.ConstantTimeCompare(got, hmacSHA256(x.keys.serverKey, x.authMessage)) != 1 {
		return fmt.Errorf("auth: upstream server signature does not match the verifier")
	}
	return nil
}
