package phi

import (
	"bytes"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Atomicity when the proxy fails a statement the server already ran (a
// value that does not decrypt, the safety net): the client gets an error
// for it, as if the server had raised it, and everything the server sends
// until ReadyForQuery is dropped. Inside an explicit transaction the
// failure is then made real upstream (ReadyForQuery 'E' and a poison
// Query: see ready). Outside one, the server committed the implicit
// transaction — the statements of the query string, or of the pipeline
// up to Sync — while a client that saw an error believes it rolled back.
// When anything in that implicit transaction may have changed something
// (a statement other than a plain read completed, before or after the
// failed one, or the failed one itself changed data: INSERT … RETURNING),
// or a transaction-control command ran after the failure, the session
// ends with FATAL 08007 (transaction_resolution_unknown) instead of
// ReadyForQuery: the proxy cannot claim an outcome it does not know.
// Otherwise nothing was changed, and the client's belief is right.

// txTrack is the server goroutine's view of the implicit transaction.
type txTrack struct {
	// changed: since the last ReadyForQuery or transaction-control
	// command, a statement that may have changed something completed.
	changed bool
	// After a failure: txControl says a transaction-control command
	// completed (the implicit transaction was cut where the client cannot
	// see); rolledBack that the server then raised an error of its own
	// (the implicit transaction was rolled back after all).
	txControl  bool
	rolledBack bool
	// copyOut: the COPY that completes next was a COPY TO (its tag does
	// not say which way it went).
	copyOut bool
}

// readOnlyTag reports whether a command tag's statement changes nothing
// (a plain SELECT; SELECT INTO and CREATE TABLE AS also answer SELECT:
// they are counted as reads, see docs/sql-support.md).
func readOnlyTag(tag []byte) bool {
	w := firstWord(tag)
	for _, t := range []string{"SELECT", "SHOW", "FETCH", "MOVE", "EXPLAIN"} {
		if string(w) == t {
			return true
		}
	}
	return false
}

// txControlTag reports whether a command tag ends or starts a
// transaction or a savepoint.
func txControlTag(tag []byte) bool {
	switch string(firstWord(tag)) {
	case "BEGIN", "START", "COMMIT", "ROLLBACK", "END", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE":
		return true
	}
	return false
}

func firstWord(tag []byte) []byte {
	if i := bytes.IndexByte(tag, ' '); i >= 0 {
		return tag[:i]
	}
	return tag
}

// trackCompletion notes a CommandComplete (server goroutine), whether it
// is forwarded or dropped after a failure.
func (s *session) trackCompletion(m *pgproto3.CommandComplete) {
	copyOut := s.tx.copyOut && string(firstWord(m.CommandTag)) == "COPY"
	s.tx.copyOut = false
	switch {
	case copyOut:
	case txControlTag(m.CommandTag):
		if s.dropping {
			s.tx.txControl = true
		} else {
			s.tx.changed = false // the client saw where the transaction ended
		}
	case !readOnlyTag(m.CommandTag):
		s.tx.changed = true
	}
}

// trackDroppedError notes a server error dropped after a failure: the
// implicit transaction is rolled back.
func (s *session) trackDroppedError() {
	s.tx.rolledBack = true
}

// outcomeUnknown is called at ReadyForQuery (server goroutine): it
// returns the FATAL error that ends the session when a statement failed
// here and the server may have committed changes the client believes
// rolled back; and it starts tracking the next transaction.
func (s *session) outcomeUnknown(z *pgproto3.ReadyForQuery) error {
	t := s.tx
	s.tx = txTrack{}
	if !s.dropping {
		return nil
	}
	if t.txControl || z.TxStatus == 'I' && t.changed && !t.rolledBack {
		return pgerr.Fatal(pgerr.TransactionResolutionUnknown, "phiproxy failed a statement after the server ran it, and the server may have committed the implicit transaction it belonged to").
			WithHint("the statements of the query string (or of the pipeline up to Sync) may have taken effect: check before retrying; run them in an explicit transaction (BEGIN … COMMIT) to get a clean rollback when phiproxy fails one")
	}
	return nil
}
