package auth

import (
	"context"
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Verifier is a role's row from auth.query.
type Verifier struct {
	Role string
	// Secret is pg_authid.rolpassword: "SCRAM-SHA-256$…", "md5…", or ""
	// when the role has no password (NULL).
	Secret string
	// ValidUntil is rolvaliduntil; nil means no expiry.
	ValidUntil *time.Time
	// CanLogin is rolcanlogin. A query that does not return it should set
	// it true and let the upstream server refuse NOLOGIN roles.
	CanLogin bool
}

// LogValue keeps the verifier out of logs.
func (v *Verifier) LogValue() slog.Value { return slog.StringValue(redacted) }

// LookupFunc returns the verifier of role, or (nil, nil) when there is no
// such role. Returning NOLOGIN roles (with CanLogin false) rather than
// filtering them out lets a client with the right password get
// PostgreSQL's 28000 "role … is not permitted to log in"; filtering them
// makes a NOLOGIN role look like an unknown one (28P01).
type LookupFunc func(ctx context.Context, role string) (*Verifier, error)

// Options configure an Authenticator.
type Options struct {
	// Lookup fetches verifiers; required.
	Lookup LookupFunc
	// MockSecret keys the mock salt given to unknown roles. Instances behind
	// one load balancer should share it (at least 32 random bytes), so that
	// an unknown role gets the same salt from each of them, as a real role
	// does. Random per Authenticator when empty.
	MockSecret []byte
	// Now is the clock for VALID UNTIL; time.Now when nil.
	Now func() time.Time
}

// Authenticator authenticates clients on behalf of PostgreSQL. It is safe
// for concurrent use.
type Authenticator struct {
	lookup  LookupFunc
	mockKey []byte
	now     func() time.Time
}

// New returns an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Lookup == nil {
		return nil, errors.New("auth: Options.Lookup is required")
	}
	a := &Authenticator{lookup: opts.Lookup, mockKey: slices.Clone(opts.MockSecret), now: opts.Now}
	if len(a.mockKey) == 0 {
		a.mockKey = randomBytes(32)
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Client describes the client leg of one session.
type Client struct {
	// User is the "user" of the client's StartupMessage.
	User string
	// ChannelBinding is TLSServerEndPoint of the certificate the proxy
	// presented on this connection, or nil when the client leg is plain TCP
	// (or the certificate allows no binding). SCRAM-SHA-256-PLUS is offered
	// exactly when it is set.
	ChannelBinding []byte
}

// ErrClientGone is returned (wrapped) when the client closed the
// connection or sent Terminate during authentication, as libpq does when it
// has no password to give; PostgreSQL logs nothing in that case.
var ErrClientGone = errors.New("auth: client closed the connection during authentication")

// Authenticate runs the password exchange with the client on be. On success
// it has sent everything up to but not including AuthenticationOk, which
// the caller sends once the upstream login succeeded (or an upstream error
// instead). A *pgerr.Error is to be sent to the client as an ErrorResponse;
// any other error is an I/O failure or ErrClientGone.
//
// be's reads are not bound by ctx: the caller sets a deadline on the
// connection (PostgreSQL's authentication_timeout is one minute).
func (a *Authenticator) Authenticate(ctx context.Context, be *pgproto3.Backend, c Client) (*Credentials, error) {
	v, err := a.lookup(ctx, c.User)
	if err != nil {
		return nil, pgerr.Fatal(pgerr.ConnectionFailure, `could not look up the password verifier of user "`+c.User+`"`).WithCause(err)
	}
	// PostgreSQL treats a missing role, a role without password and an
	// expired one alike (get_role_password returns NULL): a mock SCRAM
	// exchange that fails at the proof.
	usable := v != nil && v.Secret != "" && (v.ValidUntil == nil || !v.ValidUntil.Before(a.now()))
	var creds *Credentials
	if usable && isMD5Secret(v.Secret) {
		creds, err = a.md5(be, c.User, v.Secret)
	} else {
		x := &serverExchange{user: c.User, cbData: c.ChannelBinding}
		var ok bool
		if usable {
			x.secret, ok = parseSCRAMSecret(v.Secret)
		}
		if !ok {
			// Also a plaintext rolpassword: PostgreSQL's SCRAM check dooms it.
			x.secret, x.doomed = mockSecret(a.mockKey, c.User), true
		}
		creds, err = scram(be, x)
	}
	if err != nil {
		return nil, err
	}
	if v == nil || !v.CanLogin {
		// PostgreSQL checks rolcanlogin after authentication succeeded.
		creds.Wipe()
		return nil, pgerr.Fatal(pgerr.InvalidAuthorizationSpec, `role "`+c.User+`" is not permitted to log in`)
	}
	return creds, nil
}

func scram(be *pgproto3.Backend, x *serverExchange) (*Credentials, error) {
	mechs := []string{mechSCRAM}
	if x.cbData != nil {
		mechs = []string{mechSCRAMPlus, mechSCRAM}
	}
	if err := sendAuth(be, &pgproto3.AuthenticationSASL{AuthMechanisms: mechs}, pgproto3.AuthTypeSASL); err != nil {
		return nil, err
	}
	init, err := receive[*pgproto3.SASLInitialResponse](be, "SASL response")
	if err != nil {
		return nil, err
	}
	switch {
	case init.AuthMechanism == mechSCRAMPlus && x.cbData != nil:
		x.plus = true
	case init.AuthMechanism == mechSCRAM:
	default:
		return nil, pgerr.Fatal(pgerr.ProtocolViolation, "client selected an invalid SASL authentication mechanism")
	}
	serverFirst, err := x.handleClientFirst(string(init.Data))
	if err != nil {
		return nil, err
	}
	if err := sendAuth(be, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}, pgproto3.AuthTypeSASLContinue); err != nil {
		return nil, err
	}
	resp, err := receive[*pgproto3.SASLResponse](be, "SASL response")
	if err != nil {
		return nil, err
	}
	serverFinal, keys, err := x.handleClientFinal(string(resp.Data))
	if err != nil {
		return nil, err
	}
	if err := sendAuth(be, &pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}, pgproto3.AuthTypeSASLFinal); err != nil {
		return nil, err
	}
	return &Credentials{role: x.user, scram: keys}, nil
}

func (a *Authenticator) md5(be *pgproto3.Backend, user, secret string) (*Credentials, error) {
	var salt [4]byte
	copy(salt[:], randomBytes(4))
	if err := sendAuth(be, &pgproto3.AuthenticationMD5Password{Salt: salt}, pgproto3.AuthTypeMD5Password); err != nil {
		return nil, err
	}
	pw, err := receive[*pgproto3.PasswordMessage](be, "password response")
	if err != nil {
		return nil, err
	}
	if pw.Password == "" {
		return nil, pgerr.Fatal(pgerr.InvalidPassword, "empty password returned by client")
	}
	if subtle.ConstantTimeCompare([]byte(pw.Password), []byte(md5Response(secret, salt))) != 1 {
		return nil, passwordFailed(user)
	}
	return &Credentials{role: user, md5: secret}, nil
}

// md5Response is the answer to an md5 challenge for a stored md5 verifier:
// "md5" + hex(md5(hex-part-of-verifier + salt)).
func md5Response(secret string, salt [4]byte) string {
	sum := md5.Sum(append([]byte(secret[3:]), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

func sendAuth(be *pgproto3.Backend, msg pgproto3.BackendMessage, authType uint32) error {
	if err := be.SetAuthType(authType); err != nil {
		panic("BUG: " + err.Error())
	}
	be.Send(msg)
	if err := be.Flush(); err != nil {
		return fmt.Errorf("auth: send to client: %w", err)
	}
	return nil
}

// receive reads the client's answer, want, which must be a T.
func receive[T pgproto3.FrontendMessage](be *pgproto3.Backend, want string) (T, error) {
	var none T
	msg, err := be.Receive()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return none, fmt.Errorf("%w: %w", ErrClientGone, err)
		}
		return none, fmt.Errorf("auth: receive %s: %w", want, err)
	}
	if _, ok := msg.(*pgproto3.Terminate); ok {
		return none, ErrClientGone
	}
	m, ok := msg.(T)
	if !ok {
		return none, unexpected(want, msg)
	}
	return m, nil
}

// unexpected is PostgreSQL's error for a message of the wrong type during
// authentication; like PostgreSQL it names the type by its byte value.
func unexpected(want string, msg pgproto3.FrontendMessage) *pgerr.Error {
	typ := 0
	if b, err := msg.Encode(nil); err == nil && len(b) > 0 {
		typ = int(b[0])
	}
	return pgerr.Fatal(pgerr.ProtocolViolation, fmt.Sprintf("expected %s, got message type %d", want, typ))
}
