package proxy

import (
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// A session is relayed by two goroutines, one per direction. Each reads
// framed messages from its source leg and hands every complete message to
// its direction's pump, which tracks the protocol state, passes the
// messages its Interceptor selected to it, and copies all others to the
// other leg as raw bytes. Output is flushed only when the source has
// nothing more to read, so a pipelined batch leaves in one write.
//
// (An experiment read plain TCP sockets through syscall.RawConn to skip the
// read that finds no data (EAGAIN) on each request–response hop; it removed
// those reads but not a measurable microsecond of CPU per transaction, and
// a FIN that arrives together with the last data would go unnoticed until
// the next event, so it was not kept: see docs/performance.md.)

// pump is one direction's message handling.
type pump struct {
	s          *session
	src, dst   *leg
	fromClient bool
	hooked     MessageSet // types handed to the Interceptor, empty without one
}

func (s *session) clientPump() *pump {
	p := &pump{s: s, src: s.client, dst: s.server, fromClient: true}
	if s.hook != nil {
		p.hooked = s.fromClient
	}
	return p
}

func (s *session) serverPump() *pump {
	p := &pump{s: s, src: s.server, dst: s.client}
	if s.hook != nil {
		p.hooked = s.fromServer
	}
	return p
}

// wantsBody reports whether messages of type typ go to the Interceptor
// (and so must be complete in memory).
func (p *pump) wantsBody(typ byte) bool { return p.hooked.Has(typ) }

// message handles one complete message. frame, when not nil, is the whole
// message with its header, contiguous (body == frame[5:]).
func (p *pump) message(typ byte, body, frame []byte) error {
	if p.fromClient {
		if p.wantsBody(typ) {
			// The state follows what the Interceptor actually sends
			// upstream (Out.Forward / Out.ToServer), not what the
			// client sent: it may drop, replace or inject messages.
			return p.s.hookClient(typ, body)
		}
		p.s.clientSaw(typ)
	} else {
		if err := p.s.serverSaw(typ, len(body), body); err != nil {
			return err
		}
		if p.wantsBody(typ) {
			return p.s.hookServer(typ, body)
		}
	}
	if frame == nil {
		return writeRaw(p.dst, typ, body)
	}
	p.dst.mu.Lock()
	_, err := p.dst.w.Write(frame)
	p.dst.mu.Unlock()
	if err != nil {
		return &writeError{err}
	}
	return nil
}

// begin handles the start of a message too large for the buffer that is
// copied as it streams in (never one the Interceptor selected): its state
// effects, from its type and length alone.
func (p *pump) begin(typ byte, bodyLen int) error {
	if p.fromClient {
		p.s.clientSaw(typ)
		return nil
	}
	return p.s.serverSaw(typ, bodyLen, nil)
}

// run relays through the source leg's bufio.Reader until the source or
// the destination fails.
func (p *pump) run() error {
	in := &p.src.in
	for {
		if in.r.Buffered() == 0 {
			if err := p.dst.flush(); err != nil {
				return err
			}
		}
		typ, n, err := in.header()
		if err != nil {
			var tooLarge *errMessageTooLarge
			if errors.Is(err, errInvalidLength) || errors.As(err, &tooLarge) {
				// As PostgreSQL does, the messages before the bad one
				// are processed; nothing of it is read or sent.
				if ferr := p.dst.flush(); ferr != nil {
					return ferr
				}
			}
			return err
		}
		if p.fromClient {
			if !validFrontendType(typ) {
				// As PostgreSQL does, but without sending it upstream:
				// what came before it is relayed, then the session ends.
				if err := p.dst.flush(); err != nil {
					return err
				}
				return pgerr.Fatal(pgerr.ProtocolViolation, "invalid frontend message type "+strconv.Itoa(int(typ)))
			}
			p.s.clientActive() // not idle (see idle.go)
		}
		total := 5 + n
		switch {
		case total <= in.r.Size():
			frame, err := in.r.Peek(total)
			if err != nil {
				return unexpected(err)
			}
			// Discard only advances the read index: frame stays valid
			// until the next read refills the buffer.
			_, _ = in.r.Discard(total)
			if err := p.message(typ, frame[5:], frame); err != nil {
				return err
			}
		case p.wantsBody(typ):
			_, body, err := in.next()
			if err != nil {
				return err
			}
			if err := p.message(typ, body, nil); err != nil {
				return err
			}
		default:
			if err := p.begin(typ, n); err != nil {
				return err
			}
			p.dst.mu.Lock()
			err = in.copyMessage(p.dst.w, n)
			p.dst.mu.Unlock()
			if err != nil {
				return err
			}
		}
		if p.fromClient {
			// Again after the message: a ReadyForQuery answering an
			// earlier request may have armed the timer before this one
			// was counted in flight.
			p.s.clientActive()
		}
	}
}

// hookClient decodes a selected client message and hands it to the
// Interceptor.
func (s *session) hookClient(typ byte, body []byte) error {
	msg, err := s.fdec.decode(typ, body)
	if err != nil {
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid frontend message").WithCause(err)
	}
	if b, ok := msg.(*pgproto3.Bind); ok {
		// An Interceptor re-encodes a Bind with one format code per
		// parameter, which would make a malformed one well-formed: the
		// server must not be the only one to check it.
		if n, f := len(b.Parameters), len(b.ParameterFormatCodes); f > 1 && f != n {
			return pgerr.Fatal(pgerr.ProtocolViolation, "bind message has "+strconv.Itoa(f)+" parameter formats but "+strconv.Itoa(n)+" parameters")
		}
	}
	if msg == nil {
		return writeRaw(s.server, typ, body)
	}
	o := &s.outClient
	*o = Out{s: s, toServer: true, typ: typ, body: body}
	if err := s.hook.ClientMessage(msg, o); err != nil {
		return &hookError{err}
	}
	return nil
}

// hookServer is hookClient for server messages.
func (s *session) hookServer(typ byte, body []byte) error {
	msg, err := s.bdec.decode(typ, body)
	if err != nil {
		return pgerr.Fatal(pgerr.ProtocolViolation, "invalid message from the upstream server").WithCause(err)
	}
	if msg == nil {
		return writeRaw(s.client, typ, body)
	}
	o := &s.outServer
	*o = Out{s: s, toServer: false, typ: typ, body: body}
	if err := s.hook.ServerMessage(msg, o); err != nil {
		return &hookError{err}
	}
	return nil
}

// validFrontendType reports whether typ is a message a client may send once
// the session is established (PostgreSQL's postgres.c accepts these and
// ends the session with 08P01 on any other).
func validFrontendType(typ byte) bool {
	switch typ {
	case MsgQuery, MsgParse, MsgBind, MsgDescribe, MsgExecute, MsgClose, MsgSync, MsgFlush,
		MsgFunctionCall, MsgCopyData, MsgCopyDone, MsgCopyFail, MsgTerminate:
		return true
	}
	return false
}
