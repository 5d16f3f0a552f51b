package proxy

import "fmt"

// State is where a session stands in the protocol. It changes only through
// transition, driven by the message types the relay loops see in both
// directions (the type byte is read anyway, so tracking costs nothing).
type State int32

// Session states.
const (
	// StateStartup: before the first ReadyForQuery (TLS, startup, auth).
	StateStartup State = iota
	// StateIdle: ReadyForQuery 'I' seen, no transaction open.
	StateIdle
	// StateInTx: ReadyForQuery 'T', a transaction block is open.
	StateInTx
	// StateFailedTx: ReadyForQuery 'E', the transaction is aborted.
	StateFailedTx
	// StateSkipTillSync: an error ended an extended-protocol batch; the
	// server ignores messages until the client's Sync.
	StateSkipTillSync
	// StateCopyIn: CopyInResponse seen, the client streams CopyData.
	StateCopyIn
	// StateCopyOut: CopyOutResponse seen, the server streams CopyData.
	StateCopyOut
	// StateClosed: the session is over.
	StateClosed
)

var stateNames = [...]string{"Startup", "Idle", "InTx", "FailedTx", "SkipTillSync", "CopyIn", "CopyOut", "Closed"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// event is what moves a session from one State to the next.
type event struct {
	kind eventKind
	// status is the ReadyForQuery transaction status ('I', 'T', 'E').
	status byte
	// extended is set on evServerError when an extended-protocol batch was
	// open, i.e. the server will now skip to Sync.
	extended bool
}

type eventKind uint8

const (
	evReady   eventKind = iota + 1 // server ReadyForQuery
	evError                        // server ErrorResponse
	evCopyIn                       // server CopyInResponse
	evCopyOut                      // server CopyOutResponse (or CopyBothResponse)
	evCopyEnd                      // server CommandComplete while copying
	evClose                        // either side went away
)

// transition is the session's only state transition function. tx is the
// transaction state of the last ReadyForQuery (Idle, InTx or FailedTx), the
// state a COPY or a skipped batch falls back to until the next one.
func transition(cur, tx State, ev event) State {
	if cur == StateClosed {
		return StateClosed
	}
	switch ev.kind {
	case evClose:
		return StateClosed
	case evReady:
		switch ev.status {
		case 'I':
			return StateIdle
		case 'T':
			return StateInTx
		case 'E':
			return StateFailedTx
		}
		panic(fmt.Sprintf("BUG: ReadyForQuery status %q reached transition unchecked", ev.status))
	case evError:
		if cur == StateStartup {
			return StateStartup
		}
		if ev.extended {
			return StateSkipTillSync
		}
		if cur == StateCopyIn || cur == StateCopyOut {
			return tx
		}
		return cur
	case evCopyIn:
		return StateCopyIn
	case evCopyOut:
		return StateCopyOut
	case evCopyEnd:
		if cur == StateCopyIn || cur == StateCopyOut {
			return tx
		}
		return cur
	}
	panic(fmt.Sprintf("BUG: unknown session event %d", ev.kind))
}
