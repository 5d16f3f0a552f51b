package migrate

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// pass converts, in primary-key batches, the rows of t that match pending:
// it reads each row's primary key, xmin and src, converts src, and writes
// set only where xmin is unchanged (a row written meanwhile keeps matching
// pending and is left for the next pass).
type pass struct {
	t       *table
	pending string // WHERE condition of rows still to convert (alias t)
	src     string // the value to convert (alias t)
	set     string // SET clause; v.val is the converted value
	valType string // SQL array type of the converted values
	// convert returns the converted value of one non-NULL src: []byte
	// (bytea) or string (text).
	convert func(src []byte) (any, error)
}

// run makes one pass over the table and returns the number of rows
// converted. point names the crash points: "<point>-read:N" after batch N
// was read, "<point>:N" once it is committed (N counts from *batches).
func (p *pass) run(ctx context.Context, conn Conn, o *Options, prog *progress, point string, batches *int) (int64, error) {
	t := p.t
	n := len(t.pk)
	var cols []string
	for _, k := range t.pk {
		cols = append(cols, "t."+k+"::text")
	}
	first := fmt.Sprintf("SELECT %s, t.xmin::text, %s FROM %s t WHERE %s ORDER BY %s LIMIT %d",
		strings.Join(cols, ", "), p.src, t.rel, p.pending, t.pkList("t"), o.BatchSize)
	args := make([]string, n)
	for i := range t.pk {
		args[i] = fmt.Sprintf("$%d::%s", i+1, t.pkTypes[i])
	}
	next := fmt.Sprintf("SELECT %s, t.xmin::text, %s FROM %s t WHERE %s AND (%s) > (%s) ORDER BY %s LIMIT %d",
		strings.Join(cols, ", "), p.src, t.rel, p.pending, t.pkList("t"), strings.Join(args, ", "), t.pkList("t"), o.BatchSize)
	var un, vcols, match []string
	for i := range t.pk {
		un = append(un, fmt.Sprintf("$%d::text[]", i+1))
		vcols = append(vcols, fmt.Sprintf("k%d", i))
		match = append(match, fmt.Sprintf("v.k%d::%s", i, t.pkTypes[i]))
	}
	update := fmt.Sprintf("UPDATE %s t SET %s FROM unnest(%s, $%d::text[], $%d::%s) AS v(%s, x, val) WHERE (%s) = (%s) AND t.xmin = v.x::xid",
		t.rel, p.set, strings.Join(un, ", "), n+1, n+2, p.valType, strings.Join(vcols, ", "), t.pkList("t"), strings.Join(match, ", "))

	keys := make([][]string, n)
	var xmins []string
	var vals []any
	var last []any
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		for i := range keys {
			keys[i] = keys[i][:0]
		}
		xmins, vals = xmins[:0], vals[:0]
		q := first
		if last != nil {
			q = next
		}
		rows, err := conn.Query(ctx, q, last...)
		if err != nil {
			return total, fmt.Errorf("%s: reading a batch: %w", t.col.Ident(), err)
		}
		for rows.Next() {
			raw := rows.RawValues()
			for i := 0; i < n; i++ {
				keys[i] = append(keys[i], string(raw[i]))
			}
			xmins = append(xmins, string(raw[n]))
			v, err := p.convert(raw[n+1])
			if err != nil {
				rows.Close()
				// The primary key (never a PHI column) tells the DBA which
				// row to look at; the error names the column, never the value.
				key := make([]string, n)
				for i := range key {
					key[i] = keys[i][len(keys[i])-1]
				}
				return total, fmt.Errorf("row (%s) = (%s): %w", t.pkList(""), strings.Join(key, ", "), err)
			}
			vals = append(vals, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return total, fmt.Errorf("%s: reading a batch: %w", t.col.Ident(), err)
		}
		if len(xmins) == 0 {
			return total, nil
		}
		*batches++
		o.crashAt(fmt.Sprintf("%s-read:%d", point, *batches))
		uargs := make([]any, 0, n+2)
		for i := range keys {
			uargs = append(uargs, keys[i])
		}
		uargs = append(uargs, xmins, typedVals(vals, p.valType))
		tag, err := conn.Exec(ctx, update, uargs...)
		wipe(vals)
		if err != nil {
			return total, fmt.Errorf("%s: writing a batch: %w", t.col.Ident(), err)
		}
		o.crashAt(fmt.Sprintf("%s:%d", point, *batches))
		total += tag.RowsAffected()
		prog.add(tag.RowsAffected())
		o.throttle(prog)
		if len(xmins) < o.BatchSize {
			return total, nil
		}
		last = make([]any, n)
		for i := range keys {
			last[i] = keys[i][len(keys[i])-1]
		}
	}
}

// typedVals turns the converted values into the slice pgx encodes as the
// array type.
func typedVals(vals []any, typ string) any {
	if typ == "bytea[]" {
		out := make([][]byte, len(vals))
		for i, v := range vals {
			out[i] = v.([]byte)
		}
		return out
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = v.(string)
	}
	return out
}

// wipe clears converted byte values once written (plaintext for decrypt
// is a string and cannot be cleared; its bytes are PostgreSQL's now).
func wipe(vals []any) {
	for _, v := range vals {
		if b, ok := v.([]byte); ok {
			clear(b)
		}
	}
}

// throttle sleeps as long as --rate asks.
func (o *Options) throttle(prog *progress) {
	if o.Rate <= 0 {
		return
	}
	want := prog.start.Add(time.Duration(float64(prog.done) / o.Rate * float64(time.Second)))
	if d := time.Until(want); d > 0 {
		time.Sleep(d)
	}
}
