package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// FuzzStartup feeds arbitrary bytes to the proxy as the first thing a
// client sends. The upstream is a closed port, so no PostgreSQL is needed.
// Properties: no panic, and the proxy closes the connection on its own
// within its startup deadline (never a hang), leaving no session behind.
func FuzzStartup(f *testing.F) {
	startup := func(version uint32, kv ...string) []byte {
		b := binary.BigEndian.AppendUint32(nil, version)
		for _, s := range kv {
			b = append(append(b, s...), 0)
		}
		b = append(b, 0)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(b)+4)), b...)
	}
	code := func(c uint32, extra ...byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(extra)))
		return append(binary.BigEndian.AppendUint32(b, c), extra...)
	}
	f.Add(code(sslRequestCode))
	f.Add(code(gssEncRequestCode))
	f.Add(append(code(gssEncRequestCode), code(sslRequestCode)...))
	f.Add(code(cancelRequestCode, 0, 0, 0, 1, 1, 2, 3, 4))
	f.Add(startup(3<<16, "user", "alice", "database", "db"))
	f.Add(startup(3<<16|2, "user", "alice", "_pq_.x", "1"))
	f.Add(startup(2<<16, "user", "alice"))
	f.Add(startup(3<<16, "database", "db"))
	f.Add(startup(3<<16, "user", "alice", "replication", "true"))
	f.Add([]byte{0, 0, 0, 3})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0})
	f.Add([]byte{0, 0, 0x27, 0x11, 0, 3, 0, 0})
	f.Add(startup(3<<16, "user", "alice")[:11])
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add(append(startup(3<<16, "user", "alice"), 'Q', 0, 0, 0, 9, 'x', 0, 0, 0))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()
	cfg := proxyConfig(f, closedPort, "auth: {mode: relay}", "limits: {connect_timeout: 1s}")
	srv, err := New(cfg, WithLogger(slog.New(slog.NewJSONHandler(io.Discard, nil))), WithStartupTimeout(2*time.Second))
	if err != nil {
		f.Fatal(err)
	}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	f.Cleanup(func() { srv.Close() })

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write(in)
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the proxy kept the connection open for %q", in)
		}
	})
}
