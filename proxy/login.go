package proxy

import (
	"context"
	"encoding/binary"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// loginResult is what a login leaves behind: the upstream's cancel key and
// the transaction status of its first ReadyForQuery. Everything else the
// upstream sent (AuthenticationOk, ParameterStatus, NoticeResponse) has been
// buffered towards the client; the session adds the BackendKeyData (the
// upstream's PID with a secret of the proxy's) and the ReadyForQuery.
type loginResult struct {
	pid    uint32
	secret []byte
	status byte
	// params are the ParameterStatus values the upstream reported.
	params map[string]string
}

// loginFunc authenticates the client of s and logs in upstream; on
// success s.server is set.
type loginFunc func(ctx context.Context, s *session, rt *runtimeConfig, p *startupPacket) (*loginResult, error)

// connectUpstream dials the upstream server and sends the client's startup
// parameters (protocol 3.0, without "_pq_." options).
func connectUpstream(ctx context.Context, s *session, rt *runtimeConfig, p *startupPacket, extra ...param) (*leg, error) {
	conn, err := rt.upstream.dial(ctx)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(s.srv.opts.startupTimeout))
	up := newLeg(conn, rt.cfg.Limits.MaxMessageBytes)
	if !s.setServer(up) {
		return nil, errClientGone
	}
	params := make(map[string]string, len(p.params)+len(extra))
	for _, kv := range p.params {
		params[kv.key] = kv.value
	}
	for _, kv := range extra {
		params[kv.key] = kv.value
	}
	if err := up.sendNow(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}); err != nil {
		return nil, upstreamConnectError(err)
	}
	return up, nil
}

// relayLogin is auth.mode relay: the upstream's authentication exchange is
// relayed message by message between client and server. SCRAM-SHA-256-PLUS
// is hidden from the client, because channel binding would bind to the
// proxy's certificate and the upstream would reject the proof; with a TLS
// upstream PostgreSQL then refuses libpq's channel_binding=prefer, which is
// why relay is only the fallback for a non-TLS upstream.
func relayLogin(ctx context.Context, s *session, rt *runtimeConfig, p *startupPacket) (*loginResult, error) {
	up, err := connectUpstream(ctx, s, rt, p)
	if err != nil {
		return nil, err
	}
	return relayUntilReady(s, up)
}

// relayUntilReady relays the upstream's login messages to the client until
// its ReadyForQuery: authentication requests (answered by the client, in
// relay mode), ParameterStatus and NoticeResponse. BackendKeyData and
// ReadyForQuery are kept for the session, which sends its own.
func relayUntilReady(s *session, up *leg) (*loginResult, error) {
	res := &loginResult{params: map[string]string{}}
	for {
		typ, body, err := up.in.next()
		if err != nil {
			return nil, lostUpstreamDuringLogin(err)
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid authentication request from the upstream server")
			}
			switch code := binary.BigEndian.Uint32(body); code {
			case pgproto3.AuthTypeOk, pgproto3.AuthTypeSASLFinal:
				if err := writeRaw(s.client, typ, body); err != nil {
					return nil, err
				}
			case pgproto3.AuthTypeSASL:
				var m pgproto3.AuthenticationSASL
				if err := m.Decode(body); err != nil {
					return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid SASL request from the upstream server").WithCause(err)
				}
				m.AuthMechanisms = slices.DeleteFunc(m.AuthMechanisms, func(mech string) bool { return mech == "SCRAM-SHA-256-PLUS" })
				if err := s.client.sendNow(&m); err != nil {
					return nil, err
				}
				if err := relayClientResponse(s, up); err != nil {
					return nil, err
				}
			case pgproto3.AuthTypeSASLContinue, pgproto3.AuthTypeCleartextPassword, pgproto3.AuthTypeMD5Password:
				if err := writeRaw(s.client, typ, body); err != nil {
					return nil, err
				}
				if err := s.client.flush(); err != nil {
					return nil, err
				}
				if err := relayClientResponse(s, up); err != nil {
					return nil, err
				}
			default:
				return nil, pgerr.Fatal(pgerr.FeatureNotSupported, "the authentication method the upstream server asks for is not supported by phiproxy").
					WithHint("Use scram-sha-256, md5 or password authentication for connections from the proxy.")
			}
		case 'K':
			var k pgproto3.BackendKeyData
			if err := k.Decode(body); err != nil {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid BackendKeyData from the upstream server").WithCause(err)
			}
			res.pid, res.secret = k.ProcessID, k.SecretKey
		case 'Z':
			if len(body) != 1 {
				return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid ReadyForQuery from the upstream server")
			}
			res.status = body[0]
			return res, nil
		case 'E':
			if err := writeRaw(s.client, typ, body); err != nil {
				return nil, err
			}
			_ = s.client.flush()
			return nil, &upstreamError{code: errorCode(body), msg: "login refused"}
		case 'S', 'N':
			if typ == 'S' {
				var ps pgproto3.ParameterStatus
				if err := ps.Decode(body); err != nil {
					return nil, pgerr.Fatal(pgerr.ProtocolViolation, "invalid ParameterStatus from the upstream server").WithCause(err)
				}
				res.params[ps.Name] = ps.Value
			}
			if err := writeRaw(s.client, typ, body); err != nil {
				return nil, err
			}
		case 'v':
			// phiproxy asked for 3.0 without options; nothing to negotiate.
		default:
			return nil, pgerr.Fatal(pgerr.ProtocolViolation, "unexpected message from the upstream server during login")
		}
	}
}

// relayClientResponse relays one authentication response ('p') from the
// client to the upstream.
func relayClientResponse(s *session, up *leg) error {
	typ, body, err := s.client.in.next()
	if err != nil {
		return errClientGone
	}
	if typ != 'p' {
		return pgerr.Fatal(pgerr.ProtocolViolation, "expected an authentication response")
	}
	if err := writeRaw(up, typ, body); err != nil {
		return lostUpstreamDuringLogin(err)
	}
	if err := up.flush(); err != nil {
		return lostUpstreamDuringLogin(err)
	}
	return nil
}

func lostUpstreamDuringLogin(err error) error {
	return pgerr.Fatal(pgerr.ConnectionFailure, "phiproxy lost the connection to the upstream server during login").WithCause(err)
}
