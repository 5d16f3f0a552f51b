package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/internal/certpool"
	"github.com/phiproxy/phiproxy/pgerr"
)

// sslRequestCode, gssEncRequestCode and cancelRequestCode are the magic
// protocol versions of the untyped startup packets.
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
	protocolV3        = 3 << 16
)

// upstreamDialer connects to the upstream server with libpq's sslmode
// semantics:
//
//	disable      plain TCP
//	allow        treated as prefer (libpq tries plain first, then TLS;
//	             phiproxy prefers the encrypted leg)
//	prefer       SSLRequest; TLS without verification on 'S', plain on 'N'
//	require      SSLRequest; 'N' is an error; no verification, unless
//	             sslrootcert is set: then as verify-ca (libpq does the same
//	             when a root certificate file exists)
//	verify-ca    TLS, chain verified against sslrootcert, any host name
//	verify-full  TLS, chain and host name (server_name or the address's host)
type upstreamDialer struct {
	address string
	mode    string
	tls     *tls.Config // nil for disable
	timeout time.Duration
}

func newUpstreamDialer(u config.Upstream, timeout time.Duration) (*upstreamDialer, error) {
	d := &upstreamDialer{address: u.Address, mode: u.SSLMode, timeout: timeout}
	if d.mode == "allow" {
		d.mode = "prefer"
	}
	if d.mode == "disable" {
		return d, nil
	}
	host, _, err := net.SplitHostPort(u.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream.address: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if net.ParseIP(host) == nil {
		tc.ServerName = host // SNI, as libpq's sslsni=1
	}
	var pool *x509.CertPool
	if u.SSLRootCert != "" {
		if pool, err = certpool.Load(u.SSLRootCert); err != nil {
			return nil, fmt.Errorf("upstream.sslrootcert: %w", err)
		}
	}
	if u.SSLCert != "" {
		cert, err := tls.LoadX509KeyPair(u.SSLCert, u.SSLKey)
		if err != nil {
			return nil, fmt.Errorf("upstream.sslcert/sslkey: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	switch {
	case d.mode == "verify-full":
		tc.RootCAs = pool
		tc.ServerName = host
		if u.ServerName != "" {
			tc.ServerName = u.ServerName
		}
	case d.mode == "verify-ca" || (d.mode == "require" && pool != nil):
		// Verify the chain but not the name: Go has no switch for that, so
		// skip its verification and do the chain check ourselves.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("upstream presented no certificate")
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	default: // prefer, require without a root certificate
		tc.InsecureSkipVerify = true
	}
	d.tls = tc
	return d, nil
}

// dial connects and negotiates TLS; the result is ready for a startup or
// cancel packet. Errors are *pgerr.Error with SQLSTATE 08001 wrapping the
// cause (which is logged, not sent to the client).
func (d *upstreamDialer) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.address)
	if err != nil {
		return nil, upstreamConnectError(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if d.tls == nil {
		return conn, nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		conn.Close()
		return nil, upstreamConnectError(err)
	}
	// Read exactly one byte, unbuffered: anything the server sent after
	// it before the handshake must not be taken as encrypted data
	// (CVE-2021-23222).
	var resp [1]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		conn.Close()
		return nil, upstreamConnectError(err)
	}
	switch resp[0] {
	case 'S':
		tconn := tls.Client(conn, d.tls)
		if err := tconn.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, upstreamConnectError(fmt.Errorf("TLS handshake: %w", err))
		}
		_ = conn.SetDeadline(time.Time{})
		return tconn, nil
	case 'N':
		if d.mode != "prefer" {
			conn.Close()
			return nil, upstreamConnectError(fmt.Errorf("upstream server does not support SSL, but upstream.sslmode is %s", d.mode))
		}
		_ = conn.SetDeadline(time.Time{})
		return conn, nil
	default:
		conn.Close()
		return nil, upstreamConnectError(fmt.Errorf("unexpected answer %q to SSLRequest", resp[0]))
	}
}

func upstreamConnectError(cause error) error {
	return pgerr.Fatal(pgerr.SQLClientUnableToEstablish, "phiproxy could not connect to the upstream server").
		WithHint("Check that PostgreSQL is running and that upstream.address and upstream.sslmode are right; the proxy's log has the cause.").
		WithCause(cause)
}
