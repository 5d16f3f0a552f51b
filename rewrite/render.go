package rewrite

import (
	"slices"

	"github.com/phiproxy/phiproxy/pgerr"
)

// Renderer makes the text to send for planned statements: the original
// SQL with every Slot replaced by its ciphertext and every Edit applied.
// It is the one renderer: the proxy sends what it renders, and FuzzPlan,
// FuzzShapeCache and the data-driven tests check the same code.
//
// The zero value is ready. A Renderer keeps its scratch between calls, so
// that rendering allocates nothing once warm; it is not safe for
// concurrent use (the proxy has one per session).
type Renderer struct {
	reps []replacement
}

// SlotFiller appends the replacement of slot to dst and returns the
// extended buffer: for the proxy, the slot's value canonicalised,
// encrypted and written as a bytea literal. slot points into the plan,
// which is shared: it must not be modified or kept.
type SlotFiller func(dst []byte, slot *Slot) ([]byte, error)

type replacement struct {
	off, n int
	text   string
	slot   *Slot
}

// Append appends to dst the text of sql up to the start of stmts[n] (all
// of sql when n is len(stmts)) with the slots and edits of stmts[:n]
// applied, and returns the extended buffer. stmts are a plan's statements
// in order (as Plan.Statements, possibly with EXECUTEs bound by
// BindExecute); sql is the plan's SQL.
//
// A space is inserted after a filled slot where the text that follows
// would run into it (needsSpace). Two replacements over the same text, or
// one reaching past the rendered end, are refused (0A000) rather than
// rendered: the planner never makes them (checkPlanInvariants, FuzzPlan),
// and were it to, no value may be sent unencrypted. On any error Append
// returns dst as it was given, the error, and the index of the statement
// whose slot failed.
func (r *Renderer) Append(dst []byte, sql string, stmts []*Statement, n int, fill SlotFiller) ([]byte, int, error) {
	end := len(sql)
	if n < len(stmts) {
		end = stmts[n].Offset
	}
	reps := r.reps[:0]
	for _, st := range stmts[:n] {
		for i := range st.Slots {
			reps = append(reps, replacement{off: st.Slots[i].Offset, n: st.Slots[i].Length, slot: &st.Slots[i]})
		}
		for _, ed := range st.Edits {
			reps = append(reps, replacement{off: ed.Offset, n: ed.Length, text: ed.Text})
		}
	}
	defer func() {
		clear(reps) // the slots point into the plan
		r.reps = reps[:0]
	}()
	if len(reps) == 0 {
		return append(dst, sql[:end]...), 0, nil
	}
	slices.SortStableFunc(reps, func(a, b replacement) int { return a.off - b.off })
	b := dst
	pos := 0
	for _, rp := range reps {
		if rp.off < pos || rp.off+rp.n > end {
			return dst, stmtIndex(stmts, rp.off), pgerr.New(pgerr.FeatureNotSupported, "phiproxy cannot rewrite this statement: two values bound for PHI columns overlap").
				WithHint("write each value bound for a PHI column as a separate literal or parameter")
		}
		b = append(b, sql[pos:rp.off]...)
		if rp.slot != nil {
			start := len(b)
			var err error
			if b, err = fill(b, rp.slot); err != nil {
				return dst, stmtIndex(stmts, rp.off), err
			}
			if len(b) > start && needsSpace(b[len(b)-1], sql, rp.off+rp.n) {
				b = append(b, ' ')
			}
		} else {
			b = append(b, rp.text...)
		}
		pos = rp.off + rp.n
	}
	return append(b, sql[pos:end]...), 0, nil
}

// stmtIndex is the index of the statement that holds byte off.
func stmtIndex(stmts []*Statement, off int) int {
	for i := len(stmts) - 1; i >= 0; i-- {
		if stmts[i].Offset <= off {
			return i
		}
	}
	return 0
}

// Text is Append for a caller that needs a string: when stmts[:n]
// replace nothing it returns sql's prefix itself, without a copy;
// otherwise the rendered text, built in *buf, which keeps the grown
// buffer for the next call.
func (r *Renderer) Text(buf *[]byte, sql string, stmts []*Statement, n int, fill SlotFiller) (string, int, error) {
	if !rewrites(stmts[:n]) {
		end := len(sql)
		if n < len(stmts) {
			end = stmts[n].Offset
		}
		return sql[:end], 0, nil
	}
	b, bad, err := r.Append((*buf)[:0], sql, stmts, n, fill)
	*buf = b[:0]
	if err != nil {
		return "", bad, err
	}
	return string(b), 0, nil
}

func rewrites(stmts []*Statement) bool {
	for _, st := range stmts {
		if len(st.Slots)+len(st.Edits) > 0 {
			return true
		}
	}
	return false
}

// Render returns the text to send for the whole plan, with every slot
// replaced by fill's result: the Renderer with a string filler, for
// callers that render once (tests, tools). The proxy keeps a Renderer.
func (p *Plan) Render(fill func(Slot) (string, error)) (string, error) {
	var r Renderer
	var buf []byte
	text, _, err := r.Text(&buf, p.SQL, p.Statements, len(p.Statements), func(dst []byte, s *Slot) ([]byte, error) {
		v, err := fill(*s)
		return append(dst, v...), err
	})
	return text, err
}

// needsSpace reports whether a replacement ending in last, followed by
// sql[next:], needs a space between them: a literal may be followed by a
// keyword with nothing between ('x'AND …), but the bytea literal that
// replaces it ends in a type name, which would run into the keyword.
func needsSpace(last byte, sql string, next int) bool {
	return next < len(sql) && isIdentByte(last) && isIdentByte(sql[next])
}
