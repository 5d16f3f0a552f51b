package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A pump must relay any byte stream the same way however it is cut into
// reads: these tests drive one client→server pump over real loopback
// sockets with the writer cutting the stream at random points, and compare
// what comes out with what went in.

func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b = <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// frame frames body as a message of type typ (either direction).
func frame(typ byte, body []byte) []byte {
	b := make([]byte, 5, 5+len(body))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func queryFrame(text string) []byte { return frame('Q', append([]byte(text), 0)) }

// upperQuery rewrites every Query to upper case and forwards Parse
// unchanged as its original bytes.
type upperQuery struct{}

func (upperQuery) Intercepts() (MessageSet, MessageSet) {
	return Messages(MsgQuery, MsgParse), MessageSet{}
}

func (upperQuery) ClientMessage(msg pgproto3.FrontendMessage, out *Out) error {
	if q, ok := msg.(*pgproto3.Query); ok {
		return out.Forward(&pgproto3.Query{String: string(bytes.ToUpper([]byte(q.String)))})
	}
	return out.ForwardUnchanged()
}

func (upperQuery) ServerMessage(msg pgproto3.BackendMessage, out *Out) error { return out.Forward(msg) }

func (upperQuery) SessionEnd(error) {}

type loopResult struct {
	out []byte
	err error
}

// pumpStream writes in to a client pump's source in random cuts and
// returns everything the pump wrote to its destination and the error it
// stopped with (after the writer closed).
func pumpStream(t *testing.T, in []byte, hook Interceptor, max int, seed uint64, prebuffer int) loopResult {
	t.Helper()
	clientApp, clientLeg := tcpPair(t)
	serverLeg, serverApp := tcpPair(t)
	s := &session{log: slog.New(slog.DiscardHandler), client: newLeg(clientLeg, max), server: newLeg(serverLeg, 0)}
	if hook != nil {
		s.hook = hook
		s.fromClient, s.fromServer = hook.Intercepts()
	}
	// Bytes the leg's bufio.Reader already holds when the relay starts.
	if prebuffer > 0 {
		if _, err := clientApp.Write(in[:prebuffer]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.client.in.r.Peek(prebuffer); err != nil {
			t.Fatal(err)
		}
		in = in[prebuffer:]
	}

	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(serverApp)
		got <- b
	}()
	go func() {
		r := rand.New(rand.NewPCG(seed, 1))
		for len(in) > 0 {
			k := min(len(in), 1+r.IntN(3*ioBufferSize/2))
			if r.IntN(4) == 0 {
				k = min(len(in), 1+r.IntN(7))
			}
			if _, err := clientApp.Write(in[:k]); err != nil {
				return
			}
			in = in[k:]
			if r.IntN(3) == 0 {
				time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
			}
		}
		clientApp.CloseWrite()
	}()
	err := s.clientPump().run()
	if ferr := s.server.flush(); ferr != nil {
		t.Fatal(ferr)
	}
	serverLeg.CloseWrite()
	select {
	case b := <-got:
		return loopResult{b, err}
	case <-time.After(20 * time.Second):
		t.Fatal("destination never closed")
		return loopResult{}
	}
}

func TestPumpRelaysAnyCut(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	var in, upper []byte
	for i := 0; i < 400; i++ {
		var n int
		switch r.IntN(20) {
		case 0:
			n = ioBufferSize + r.IntN(3*ioBufferSize) // larger than a buffer
		case 1:
			n = ioBufferSize - 5 - r.IntN(3) // around a buffer exactly
		default:
			n = r.IntN(200)
		}
		text := make([]byte, n)
		for k := range text {
			text[k] = 'a' + byte(r.IntN(26))
		}
		var m []byte
		switch r.IntN(3) {
		case 0:
			m = queryFrame(string(text))
			upper = append(upper, queryFrame(string(bytes.ToUpper(text)))...)
		case 1:
			m = frame('P', append(append([]byte("s1\x00"), text...), 0, 0, 0))
			upper = append(upper, m...)
		default:
			m = frame('d', text) // CopyData: never decoded
			upper = append(upper, m...)
		}
		in = append(in, m...)
	}
	for seed := uint64(1); seed <= 3; seed++ {
		for _, pre := range []int{0, 3, 700} {
			res := pumpStream(t, in, nil, 0, seed, pre)
			if !errors.Is(res.err, io.EOF) {
				t.Errorf("seed=%d pre=%d: pass-through stopped with %v, want EOF", seed, pre, res.err)
			}
			if !bytes.Equal(res.out, in) {
				t.Errorf("seed=%d pre=%d: pass-through changed the stream (%d bytes in, %d out)", seed, pre, len(in), len(res.out))
			}
			res = pumpStream(t, in, upperQuery{}, 0, seed, pre)
			if !errors.Is(res.err, io.EOF) {
				t.Errorf("seed=%d pre=%d: hooked stopped with %v, want EOF", seed, pre, res.err)
			}
			if !bytes.Equal(res.out, upper) {
				t.Errorf("seed=%d pre=%d: hooked stream differs (%d bytes want, %d got)", seed, pre, len(upper), len(res.out))
			}
		}
	}
}

func TestPumpFramingErrors(t *testing.T) {
	ok := queryFrame("select 1")
	bad := append([]byte{'Q'}, 0, 0, 0, 3) // length 3 < 4
	cases := []struct {
		name string
		in   []byte
		max  int
		want func(error) bool
		out  []byte // relayed before the error
	}{
		{"invalid length", append(append([]byte{}, ok...), bad...), 0,
			func(err error) bool { return errors.Is(err, errInvalidLength) }, ok},
		{"too large", append(append([]byte{}, ok...), queryFrame(string(make([]byte, 100)))...), 64,
			func(err error) bool { var e *errMessageTooLarge; return errors.As(err, &e) }, ok},
		{"eof inside a message", append(append([]byte{}, ok...), ok[:7]...), 0,
			func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, ok},
		{"eof inside a header", append(append([]byte{}, ok...), ok[:3]...), 0,
			func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, ok},
		{"eof inside a large message", append(append([]byte{}, ok...), frame('d', make([]byte, 3*ioBufferSize))[:2*ioBufferSize]...), 0,
			func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, nil},
	}
	for _, c := range cases {
		res := pumpStream(t, c.in, nil, c.max, 1, 0)
		if !c.want(res.err) {
			t.Errorf("%s: stopped with %v", c.name, res.err)
		}
		if c.out != nil && !bytes.Equal(res.out, c.out) {
			t.Errorf("%s: relayed %q, want %q", c.name, res.out, c.out)
		}
	}
}
