package testenv

import (
	"bytes"
	"sync"
	"time"
)

// Buffer is a bytes.Buffer that a logger or a child process may write
// while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Bytes returns a copy of what was written so far.
func (s *Buffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// Await reports whether cond holds for what was written, polling for up
// to d: for lines a logger writes after the event the test waited for.
func (s *Buffer) Await(d time.Duration, cond func(string) bool) bool {
	return Eventually(d, 10*time.Millisecond, func() bool { return cond(s.String()) })
}
