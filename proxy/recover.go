package proxy

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Every goroutine of a session runs under recover, as net/http's
// conn.serve runs each connection: a panic — a phiproxy bug, in the
// session's own code or in its Interceptor — ends that session with FATAL
// XX000 and leaves every other session, and the process, running. The
// log gets the panic's type and stack, never its text unless that text is
// known to hold no data (see panicSummary).

// recoverPanic is deferred at the top of each goroutine that runs a
// session's code (the one that serves it and the server→client pump).
func (s *session) recoverPanic() {
	v := recover()
	if v == nil {
		return
	}
	s.logPanic(v)
	s.end(pgerr.Fatal(pgerr.Internal, "internal error in phiproxy: the session was ended").
		WithHint("This is a phiproxy bug, please report it; reconnect to continue."))
}

func (s *session) logPanic(v any) {
	s.log.Error("phiproxy bug: session ended", "panic", panicSummary(v), "stack", string(debug.Stack()))
}

// panicSummary describes a recovered panic value for the log without
// anything it may carry from the session's data: its type, except for
// phiproxy's own "BUG…" texts and the runtime's errors (index, nil and
// conversion faults), which name no value.
func panicSummary(v any) string {
	if s, ok := v.(string); ok && strings.HasPrefix(s, "BUG") {
		return s
	}
	if re, ok := v.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("%T", v)
}
