package auth

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

const redacted = "REDACTED"

// Credentials are what a client's successful authentication leaves for the
// upstream login: the SCRAM ClientKey with the verifier's keys, or the
// stored md5 hash. They are password-equivalent for this role: never log,
// persist or send them anywhere but to the upstream server.
type Credentials struct {
	role  string
	scram *scramKeys
	md5   string
}

// Role is the authenticated user name.
func (c *Credentials) Role() string { return c.role }

// Method is "scram-sha-256" or "md5" ("" after Wipe).
func (c *Credentials) Method() string {
	switch {
	case c.scram != nil:
		return "scram-sha-256"
	case c.md5 != "":
		return "md5"
	}
	return ""
}

// LogValue keeps the credentials out of logs.
func (c *Credentials) LogValue() slog.Value { return slog.StringValue(redacted) }

// String keeps the credentials out of fmt output.
func (c *Credentials) String() string { return redacted }

// GoString keeps the credentials out of %#v.
func (c *Credentials) GoString() string { return redacted }

// Wipe overwrites the key material; the Credentials are useless after.
func (c *Credentials) Wipe() {
	if c.scram != nil {
		clear(c.scram.clientKey)
		c.scram = nil
	}
	c.md5 = ""
}

// UpstreamError is an ErrorResponse the upstream server sent during login.
// Forward Response to the client unchanged.
type UpstreamError struct {
	Response pgproto3.ErrorResponse
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream %s: %s (SQLSTATE %s)", e.Response.Severity, e.Response.Message, e.Response.Code)
}

// Login answers the upstream server's authentication requests on fe, after
// the caller sent the StartupMessage, and returns once AuthenticationOk
// arrived (the ParameterStatus, BackendKeyData and ReadyForQuery that
// follow are the caller's). upstreamTLS is the upstream connection's TLS
// state, nil for plain TCP; with it, SCRAM-SHA-256-PLUS is used when the
// server offers it, bound to the server's certificate.
//
// Errors: *UpstreamError for the server's ErrorResponse; *pgerr.Error when
// the server asks for a method the credentials cannot answer; other errors
// are I/O or protocol failures (the caller reports them as 08xxx). fe's
// reads are not bound by ctx: the caller sets a deadline on the connection.
func (c *Credentials) Login(ctx context.Context, fe *pgproto3.Frontend, upstreamTLS *tls.ConnectionState) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		msg, err := fe.Receive()
		if err != nil {
			return fmt.Errorf("auth: receive from upstream: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			return nil
		case *pgproto3.ErrorResponse:
			return upstreamError(m)
		case *pgproto3.NoticeResponse:
			// Nothing during authentication needs a notice relayed.
		case *pgproto3.AuthenticationSASL:
			if c.scram == nil {
				return c.cannot("SCRAM authentication, but the role's password is stored as md5",
					"Allow md5 for this role in the server's pg_hba.conf, or set its password again with password_encryption = 'scram-sha-256'.")
			}
			if err := c.loginSCRAM(fe, m.AuthMechanisms, upstreamTLS); err != nil {
				return err
			}
		case *pgproto3.AuthenticationMD5Password:
			if c.md5 == "" {
				return c.cannot("md5 authentication, but the role's password is stored as SCRAM", "")
			}
			fe.Send(&pgproto3.PasswordMessage{Password: md5Response(c.md5, m.Salt)})
			if err := fe.Flush(); err != nil {
				return fmt.Errorf("auth: send to upstream: %w", err)
			}
		case *pgproto3.AuthenticationCleartextPassword:
			return c.cannot("a cleartext password, which the proxy never has",
				"Use scram-sha-256 or md5 for this role in the server's pg_hba.conf.")
		case *pgproto3.AuthenticationGSS, *pgproto3.AuthenticationGSSContinue:
			return c.cannot("GSSAPI authentication", "Use scram-sha-256 or md5 for this role in the server's pg_hba.conf.")
		default:
			return fmt.Errorf("auth: unexpected upstream message %T during login", msg)
		}
	}
}

func (c *Credentials) cannot(what, hint string) error {
	e := pgerr.Fatal(pgerr.InvalidAuthorizationSpec,
		fmt.Sprintf(`the upstream server asks for %s: phiproxy cannot log in as "%s"`, what, c.role))
	if hint != "" {
		e = e.WithHint(hint)
	}
	return e
}

func (c *Credentials) loginSCRAM(fe *pgproto3.Frontend, mechs []string, upstreamTLS *tls.ConnectionState) error {
	x := &clientExchange{keys: c.scram, gs2: "n,,"}
	mech := mechSCRAM
	switch {
	case upstreamTLS == nil:
	case slices.Contains(mechs, mechSCRAMPlus):
		var cb []byte
		if len(upstreamTLS.PeerCertificates) > 0 {
			cb, _ = TLSServerEndPoint(upstreamTLS.PeerCertificates[0])
		}
		if cb != nil {
			mech, x.gs2, x.cbData = mechSCRAMPlus, "p="+cbType+",,", cb
		}
		// Else "n,,": PostgreSQL accepts a client that cannot bind, and
		// would refuse "y,," since it offered -PLUS.
	default:
		// TLS, but the server offers no -PLUS: tell it we could bind.
		x.gs2 = "y,,"
	}
	if mech == mechSCRAM && !slices.Contains(mechs, mechSCRAM) {
		return c.cannot(fmt.Sprintf("SASL mechanisms %q", mechs), "")
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: []byte(x.firstMessage())})
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("auth: send to upstream: %w", err)
	}
	msg, err := fe.Receive()
	if err != nil {
		return fmt.Errorf("auth: receive from upstream: %w", err)
	}
	var cont *pgproto3.AuthenticationSASLContinue
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		return upstreamError(m)
	case *pgproto3.AuthenticationSASLContinue:
		cont = m
	default:
		return fmt.Errorf("auth: expected AuthenticationSASLContinue from upstream, got %T", msg)
	}
	final, err := x.finalMessage(string(cont.Data))
	if err != nil {
		return err
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("auth: send to upstream: %w", err)
	}
	if msg, err = fe.Receive(); err != nil {
		return fmt.Errorf("auth: receive from upstream: %w", err)
	}
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		return upstreamError(m)
	case *pgproto3.AuthenticationSASLFinal:
		return x.verifyServerFinal(string(m.Data))
	default:
		return fmt.Errorf("auth: expected AuthenticationSASLFinal from upstream, got %T", msg)
	}
}

// upstreamError copies m (valid only until the next Receive).
func upstreamError(m *pgproto3.ErrorResponse) *UpstreamError {
	e := &UpstreamError{Response: *m}
	e.Response.UnknownFields = maps.Clone(m.UnknownFields)
	return e
}
