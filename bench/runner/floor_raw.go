package main

import (
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// epollRawRelay is epollRelay without the Go system-call bookkeeping on
// the calls that cannot block: read and write on non-blocking sockets and
// a first epoll_wait with a zero timeout go through RawSyscall; only an
// epoll_wait that will sleep goes through Syscall. Peers are found in a
// table indexed by descriptor instead of a locked map.
func epollRawRelay(ln net.Listener, upstream string) error {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	var peer [1 << 16]atomic.Int32
	go acceptPairs(ln, upstream, ep, func(cfd, ufd int32) {
		peer[cfd].Store(ufd + 1)
		peer[ufd].Store(cfd + 1)
	})
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	closePair := func(fd, p int32) {
		peer[fd].Store(0)
		peer[p].Store(0)
		unpair(ep, fd, p)
	}
	evp := uintptr(unsafe.Pointer(&events[0]))
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep), evp, uintptr(len(events)), 0, 0, 0)
		if e == 0 && r == 0 {
			r, _, e = syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep), evp, uintptr(len(events)), ^uintptr(0), 0, 0)
		}
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		for _, ev := range events[:r] {
			fd := ev.Fd
			p := peer[fd].Load() - 1
			if p < 0 {
				continue
			}
			k, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if e == syscall.EAGAIN {
				continue
			}
			if e != 0 || k == 0 {
				closePair(fd, p)
				continue
			}
			b := buf[:k]
			ok := true
			for len(b) > 0 {
				w, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(p), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
				if e == syscall.EAGAIN {
					runtime.Gosched()
					continue
				}
				if e != 0 {
					ok = false
					break
				}
				b = b[w:]
			}
			if !ok {
				closePair(fd, p)
			}
		}
	}
}
