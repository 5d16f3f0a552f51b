package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/phiproxy/phiproxy/pgcluster"
)

// Both floor relays must deliver every byte both ways, or the numbers they
// give mean nothing.
func TestFloorRelaysAreTransparent(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	for _, kind := range []string{"goroutine", "epoll", "epoll-raw"} {
		port, err := pgcluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		go serveFloor(kind, addr, echo.Addr().String()) // runs until the test binary exits
		var c net.Conn
		for i := 0; i < 100; i++ {
			if c, err = net.Dial("tcp", addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		want := make([]byte, 300<<10)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range want {
			want[i] = byte(r.IntN(256))
		}
		go func() {
			for b := want; len(b) > 0; {
				k := min(len(b), 1+r.IntN(20000))
				c.Write(b[:k])
				b = b[k:]
			}
		}()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the relay changed the bytes", kind)
		}
		c.Close()
	}
}
