package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/pgerr"
)

// maxStartupPacket is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
const maxStartupPacket = 10000

// startupPacket is a decoded StartupMessage.
type startupPacket struct {
	major, minor uint16
	// params holds the parameters in the client's order; the protocol
	// extension options ("_pq_.*") are split off into options.
	params  []param
	options []string
}

type param struct{ key, value string }

func (p *startupPacket) get(key string) string {
	for _, kv := range p.params {
		if kv.key == key {
			return kv.value
		}
	}
	return ""
}

// readStartupPacket reads one untyped startup-phase packet straight from
// conn, without buffering: after an SSLRequest nothing the client sent
// ahead of the TLS handshake may be read as if it came through TLS
// (CVE-2021-23214).
func readStartupPacket(conn net.Conn) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupPacket {
		return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid length of startup packet")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, pgerr.Fatal(pgerr.ProtocolViolation, "incomplete startup packet").WithCause(err)
	}
	return body, nil
}

func parseStartup(body []byte) (*startupPacket, error) {
	v := binary.BigEndian.Uint32(body)
	p := &startupPacket{major: uint16(v >> 16), minor: uint16(v)}
	if p.major != 3 {
		return nil, pgerr.Fatal(pgerr.FeatureNotSupported,
			fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", p.major, p.minor))
	}
	rest := body[4:]
	for {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(rest) != 1 {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		key := string(rest[:i])
		rest = rest[i+1:]
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		val := string(rest[:j])
		rest = rest[j+1:]
		if strings.HasPrefix(key, "_pq_.") {
			p.options = append(p.options, key)
			continue
		}
		p.params = append(p.params, param{key, val})
	}
	if p.get("user") == "" {
		return nil, pgerr.Fatal(pgerr.InvalidAuthorizationSpec, "no PostgreSQL user name specified in startup packet")
	}
	if r := p.get("replication"); r != "" && !isFalse(r) {
		return nil, pgerr.Fatal(pgerr.FeatureNotSupported, "replication connections are not supported through phiproxy").
			WithHint("Connect replication clients to PostgreSQL directly.")
	}
	return p, nil
}

func isFalse(s string) bool {
	switch strings.ToLower(s) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}

// clientStartup runs the client's startup phase up to a StartupMessage:
// SSLRequest (answered 'S' and TLS per client_tls.mode, or 'N'),
// GSSENCRequest (always 'N'), CancelRequest (forwarded, then the connection
// ends: it returns nil, nil) and the protocol version check.
func (s *session) clientStartup(ctx context.Context, rt *runtimeConfig) (*startupPacket, error) {
	conn := s.client.conn
	tlsDone, gssDone := false, false
	for {
		body, err := readStartupPacket(conn)
		if err != nil {
			return nil, err
		}
		switch code := binary.BigEndian.Uint32(body); code {
		case sslRequestCode:
			if tlsDone || len(body) != 4 {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "unexpected SSLRequest")
			}
			if rt.clientTLS == nil {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tconn := tls.Server(conn, rt.clientTLS)
			if err := tconn.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("client TLS handshake: %w", err)
			}
			conn = tconn
			s.setClientConn(tconn)
			tlsDone = true
		case gssEncRequestCode:
			if tlsDone || gssDone || len(body) != 4 {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "unexpected GSSENCRequest")
			}
			gssDone = true
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case cancelRequestCode:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid CancelRequest").WithCause(err)
			}
			s.handleCancel(ctx, &req)
			return nil, nil
		default:
			p, err := parseStartup(body)
			if err != nil {
				return nil, err
			}
			if rt.cfg.ClientTLS.Mode == config.TLSRequire && !tlsDone {
				return nil, pgerr.Fatal(pgerr.InvalidAuthorizationSpec, "phiproxy requires an encrypted connection (client_tls.mode is require)").
					WithHint("Connect with sslmode=require or stronger.")
			}
			return p, nil
		}
	}
}

func (s *session) handleCancel(ctx context.Context, req *pgproto3.CancelRequest) {
	e := s.srv.cancels.lookup(req.ProcessID, req.SecretKey)
	if e == nil {
		// PostgreSQL says nothing to the client either; the log says it.
		s.log.Info("cancel request with an unknown key ignored")
		if h := s.srv.opts.cancelHook; h != nil {
			h(s.info.ClientAddr, false)
		}
		return
	}
	err := forwardCancel(ctx, e)
	if h := s.srv.opts.cancelHook; h != nil {
		h(s.info.ClientAddr, err == nil)
	}
	if err != nil {
		s.log.Warn("cancel request not forwarded", "err", err)
		return
	}
	s.log.Info("cancel request forwarded")
}

// errClientGone marks the ordinary end of a client connection.
var errClientGone = errors.New("client closed the connection")
