package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// ioBufferSize is the size of each leg's read and write buffer. Messages that
// fit are relayed with one Peek and one Write; larger ones are streamed.
const ioBufferSize = 16 << 10

// errMessageTooLarge is returned when a peer announces a message body larger
// than limits.max_message_bytes; it is the framing-level counterpart of
// pgproto3's SetMaxBodyLen, enforced on both legs.
type errMessageTooLarge struct{ size, max int }

func (e *errMessageTooLarge) Error() string {
	return fmt.Sprintf("message body of %d bytes exceeds limits.max_message_bytes (%d)", e.size, e.max)
}

var errInvalidLength = errors.New("invalid message length")

// msgReader frames typed protocol messages (Byte1 type, Int32 length) from a
// buffered reader without decoding them. A message returned by next is valid
// until the following call: the bytes live in the bufio buffer.
type msgReader struct {
	r   *bufio.Reader
	max int // maximum body length, 0 = unbounded
}

// header blocks until the next message's header is buffered and returns its
// type and body length without consuming it.
func (m *msgReader) header() (typ byte, bodyLen int, err error) {
	h, err := m.r.Peek(5)
	if err != nil {
		if len(h) > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	n := int32(binary.BigEndian.Uint32(h[1:]))
	if n < 4 {
		return 0, 0, errInvalidLength
	}
	bodyLen = int(n) - 4
	if m.max > 0 && bodyLen > m.max {
		return 0, 0, &errMessageTooLarge{size: bodyLen, max: m.max}
	}
	return h[0], bodyLen, nil
}

// next consumes the next message and returns its type and body. Bodies that
// do not fit the buffer are copied into a fresh slice.
func (m *msgReader) next() (typ byte, body []byte, err error) {
	typ, n, err := m.header()
	if err != nil {
		return 0, nil, err
	}
	total := 5 + n
	if total <= m.r.Size() {
		b, err := m.r.Peek(total)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		// Discard only advances the read index: b stays valid until the
		// next read refills the buffer.
		_, _ = m.r.Discard(total)
		return typ, b[5:], nil
	}
	if _, err := m.r.Discard(5); err != nil {
		return 0, nil, unexpected(err)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(m.r, body); err != nil {
		return 0, nil, unexpected(err)
	}
	return typ, body, nil
}

// copyMessage relays the next message (whose header was just returned by
// header) to w as raw bytes.
func (m *msgReader) copyMessage(w *bufio.Writer, bodyLen int) error {
	total := 5 + bodyLen
	if total <= m.r.Size() {
		b, err := m.r.Peek(total)
		if err != nil {
			return unexpected(err)
		}
		if _, err := w.Write(b); err != nil {
			return &writeError{err}
		}
		_, _ = m.r.Discard(total)
		return nil
	}
	// Stream a large message (COPY data, big rows) without holding it.
	for total > 0 {
		b, err := m.r.Peek(min(total, m.r.Size()))
		if err != nil {
			return unexpected(err)
		}
		if _, err := w.Write(b); err != nil {
			return &writeError{err}
		}
		_, _ = m.r.Discard(len(b))
		total -= len(b)
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// writeError marks an error that happened writing to the other leg, so a
// relay loop can tell which peer failed.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// leg is one side of a session: a connection with its framing reader and a
// buffered writer. The writer is shared by the two relay goroutines (a
// refusal or a shutdown notice can come from the other direction), so every
// write holds mu for one whole message: messages never interleave.
type leg struct {
	conn net.Conn
	in   msgReader

	mu  sync.Mutex
	w   *bufio.Writer
	enc []byte // encode scratch, guarded by mu
}

func newLeg(conn net.Conn, maxBody int) *leg {
	return &leg{
		conn: conn,
		in:   msgReader{r: bufio.NewReaderSize(conn, ioBufferSize), max: maxBody},
		w:    bufio.NewWriterSize(conn, ioBufferSize),
	}
}

// sendLocked encodes msg into the write buffer; the caller holds mu.
func (l *leg) sendLocked(msg pgproto3.Message) error {
	b, err := msg.Encode(l.enc[:0])
	if err != nil {
		return err
	}
	l.enc = b
	if _, err := l.w.Write(b); err != nil {
		return &writeError{err}
	}
	return nil
}

// send buffers msg; flush writes it out.
func (l *leg) send(msg pgproto3.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sendLocked(msg)
}

func (l *leg) flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.w.Flush(); err != nil {
		return &writeError{err}
	}
	return nil
}

// sendNow buffers msgs and flushes, under one lock.
func (l *leg) sendNow(msgs ...pgproto3.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range msgs {
		if err := l.sendLocked(m); err != nil {
			return err
		}
	}
	if err := l.w.Flush(); err != nil {
		return &writeError{err}
	}
	return nil
}

// sendFatal writes a FATAL ErrorResponse and flushes it, bounded in time so
// that a client that stopped reading cannot hold a shutdown up.
func (l *leg) sendFatal(e *pgerr.Error) {
	if e.Severity != pgerr.SeverityFatal {
		c := *e
		c.Severity = pgerr.SeverityFatal
		e = &c
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_ = l.sendNow(ErrorResponse(e))
}

// ErrorResponse turns err into the ErrorResponse a client sees. It is the
// one place where phiproxy's own errors (*pgerr.Error) become protocol
// messages; errors from the upstream server are relayed as they came and
// never pass through here. An error that carries no SQLSTATE becomes XX000
// with a generic message: its text may hold details that are not for the
// client.
func ErrorResponse(err error) *pgproto3.ErrorResponse {
	pe := pgerr.As(err)
	if pe == nil {
		pe = pgerr.New(pgerr.Internal, "internal error in phiproxy")
	}
	sev := string(pe.Severity)
	if sev == "" {
		sev = string(pgerr.SeverityError)
	}
	return &pgproto3.ErrorResponse{
		Severity:            sev,
		SeverityUnlocalized: sev,
		Code:                pe.Code.String(),
		Message:             pe.Message,
		Detail:              pe.Detail,
		Hint:                pe.Hint,
		Position:            int32(pe.Position),
	}
}

// isFatalError reports whether an ErrorResponse body has severity FATAL or
// PANIC (after which the server closes the connection).
func isFatalError(body []byte) bool {
	v, found, _ := errorField(body, "VS")
	return found && (string(v) == "FATAL" || string(v) == "PANIC")
}

// errorCode extracts the SQLSTATE from an upstream ErrorResponse body. The
// upstream is not trusted to send a valid one: a body whose fields are not
// NUL-terminated gives 08P01 (protocol_violation), an error without a
// usable C field gives XX000 (internal_error), as pgerr documents.
func errorCode(body []byte) pgerr.Code {
	v, found, ok := errorField(body, "C")
	switch {
	case !ok:
		return pgerr.ProtocolViolation
	case !found:
		return pgerr.Internal
	}
	return upstreamCode(string(v))
}

// errorField returns the value of the first field of an ErrorResponse
// body whose type is one of the bytes of keys. ok is false when a field
// before it (or before the end) is not NUL-terminated.
func errorField(body []byte, keys string) (v []byte, found, ok bool) {
	for len(body) > 1 {
		k := body[0]
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		if end >= len(body) {
			return nil, false, false
		}
		if strings.IndexByte(keys, k) >= 0 {
			return body[1:end], true, true
		}
		body = body[end+1:]
	}
	return nil, false, true
}

// upstreamCode parses a SQLSTATE the upstream sent, XX000 when it is not
// one.
func upstreamCode(s string) pgerr.Code {
	if c, ok := pgerr.ParseCode(s); ok {
		return c
	}
	return pgerr.Internal
}
