package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// The floor targets answer one question about the relay (issue 3): how
// fast can a Go process relay bytes between pgbench and PostgreSQL at all,
// with two goroutines per connection (phiproxy's design) and with a single
// thread over raw epoll (PgBouncer's design)? Neither parses the protocol,
// terminates authentication or does anything else phiproxy does; they are
// lower bounds, not alternatives.
//
//	floor-goroutine  io.Copy in each direction, one goroutine each
//	floor-epoll      one locked OS thread: epoll_wait, read, write
//	floor-epoll-raw  the same with raw system calls (floor_raw.go)
//
// The runner starts each as a child process (itself, with -floor) so that
// its CPU is measured like the proxies'.

// startFloor starts a floor relay of the given kind on a free port in
// front of upstream (host:port).
func startFloor(ctx context.Context, kind, upstream string) (port, pid int, stop func(), err error) {
	port, err = pgcluster.FreePort()
	if err != nil {
		return 0, 0, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return 0, 0, nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-floor", kind, "-floor-listen", "127.0.0.1:"+strconv.Itoa(port), "-floor-upstream", upstream)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	pid, stop, err = startListening(ctx, "floor "+kind, cmd, port, os.Kill, "")
	return port, pid, stop, err
}

// serveFloor runs a floor relay until killed.
func serveFloor(kind, listen, upstream string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	switch kind {
	case "goroutine":
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					return
				}
				defer u.Close()
				c.(*net.TCPConn).SetNoDelay(true)
				u.(*net.TCPConn).SetNoDelay(true)
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u)
			}()
		}
	case "epoll":
		return epollRelay(ln, upstream)
	case "epoll-raw":
		return epollRawRelay(ln, upstream)
	}
	return fmt.Errorf("-floor %q is not goroutine, epoll or epoll-raw", kind)
}

// epollRelay relays every accepted connection on one OS thread: level-
// triggered epoll on both sockets, each readable socket read once into a
// buffer and written to its peer. A write that would block (never seen
// with pgbench's small messages) falls back to waiting for the peer to
// drain; this is a measuring tool, not a proxy.
func epollRelay(ln net.Listener, upstream string) error {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	peer := map[int32]int32{}
	go acceptPairs(ln, upstream, ep, func(cfd, ufd int32) {
		mu.Lock()
		peer[cfd], peer[ufd] = ufd, cfd
		mu.Unlock()
	})
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	closePair := func(fd, p int32) {
		unpair(ep, fd, p)
		mu.Lock()
		delete(peer, fd)
		delete(peer, p)
		mu.Unlock()
	}
	for {
		n, err := syscall.EpollWait(ep, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			fd := ev.Fd
			mu.Lock()
			p, ok := peer[fd]
			mu.Unlock()
			if !ok {
				continue
			}
			k, err := syscall.Read(int(fd), buf)
			if err == syscall.EAGAIN {
				continue
			}
			if err != nil || k == 0 {
				closePair(fd, p)
				continue
			}
			if !writeAll(int(p), buf[:k]) {
				closePair(fd, p)
			}
		}
	}
}

// acceptPairs accepts connections, dials upstream for each, takes both
// sockets out of Go's poller (a non-blocking dup that only the relay uses),
// calls pair and adds both to the epoll set ep. It runs until ln closes.
func acceptPairs(ln net.Listener, upstream string, ep int, pair func(cfd, ufd int32)) {
	detach := func(c net.Conn) (int, error) {
		f, err := c.(*net.TCPConn).File()
		c.Close()
		if err != nil {
			return -1, err
		}
		fd, err := syscall.Dup(int(f.Fd()))
		f.Close()
		if err != nil {
			return -1, err
		}
		return fd, syscall.SetNonblock(fd, true)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", upstream)
		if err != nil {
			c.Close()
			continue
		}
		c.(*net.TCPConn).SetNoDelay(true)
		u.(*net.TCPConn).SetNoDelay(true)
		cfd, err1 := detach(c)
		ufd, err2 := detach(u)
		if err1 != nil || err2 != nil {
			continue
		}
		pair(int32(cfd), int32(ufd))
		for _, fd := range []int{cfd, ufd} {
			syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
		}
	}
}

// unpair takes a relayed pair of sockets out of ep and closes them.
func unpair(ep int, fd, p int32) {
	for _, s := range []int32{fd, p} {
		syscall.EpollCtl(ep, syscall.EPOLL_CTL_DEL, int(s), nil)
		syscall.Close(int(s))
	}
}

func writeAll(fd int, b []byte) bool {
	for len(b) > 0 {
		k, err := syscall.Write(fd, b)
		if err == syscall.EAGAIN {
			runtime.Gosched() // the peer is slow: retry
			continue
		}
		if err != nil {
			return false
		}
		b = b[k:]
	}
	return true
}
