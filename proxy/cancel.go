package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelRegistry maps the BackendKeyData phiproxy gave each client to the
// upstream backend of that session. Clients never see upstream keys: a
// CancelRequest is honoured only with a key phiproxy issued, and then
// forwarded with the upstream's key over a fresh upstream connection.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[uint32]*cancelEntry
}

type cancelEntry struct {
	secret   [4]byte // the proxy's secret given to the client
	upPID    uint32
	upSecret []byte
	dialer   *upstreamDialer
}

// register issues a fresh random (pid, secret) for e.
func (r *cancelRegistry) register(e *cancelEntry) (pid uint32) {
	var b [8]byte
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("BUG: crypto/rand failed: " + err.Error())
		}
		pid = binary.BigEndian.Uint32(b[:4]) & 0x7fffffff // positive, as real PIDs
		if pid == 0 {
			continue
		}
		if _, taken := r.m[pid]; !taken {
			break
		}
	}
	copy(e.secret[:], b[4:])
	r.m[pid] = e
	return pid
}

func (r *cancelRegistry) unregister(pid uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, pid)
}

func (r *cancelRegistry) lookup(pid uint32, secret []byte) *cancelEntry {
	r.mu.Lock()
	e := r.m[pid]
	r.mu.Unlock()
	if e == nil || subtle.ConstantTimeCompare(e.secret[:], secret) != 1 {
		return nil
	}
	return e
}

// forwardCancel sends the upstream's CancelRequest for e over a new
// connection and waits for the server to close it, as libpq does, so the
// cancel has been delivered when this returns.
func forwardCancel(ctx context.Context, e *cancelEntry) error {
	conn, err := e.dialer.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(e.dialer.timeout))
	req := pgproto3.CancelRequest{ProcessID: e.upPID, SecretKey: e.upSecret}
	buf, err := req.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, conn)
	return nil
}
