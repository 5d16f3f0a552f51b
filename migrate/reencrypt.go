package migrate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/phiproxy/phiproxy/config"
	"github.com/phiproxy/phiproxy/crypto"
)

// keyPrefixLen is the length of crypto.KeyPrefix: header and Tink prefix.
var keyPrefixLen = len(crypto.KeyPrefix(0))

// Reencrypt rewrites, in primary-key batches and online, every value of
// col whose envelope is not under cipher's primary key: it is decrypted
// and encrypted again under the primary. The plaintext is the canonical
// one the envelope holds, so no format conversion is involved. A row that
// the application writes meanwhile is skipped by its xmin and found by the
// next pass; passes repeat until one finds nothing (or, if proxies keep
// writing under an old key because they were not reloaded, until the
// fifth, which then reports what is left).
func Reencrypt(ctx context.Context, conn *pgx.Conn, col config.Column, cipher *crypto.Cipher, o Options) (Result, error) {
	o.defaults()
	start := time.Now()
	t, err := begin(ctx, conn, col)
	if err != nil {
		return Result{}, err
	}
	if t.colType != "bytea" {
		return Result{}, fmt.Errorf("%s is %s, not encrypted: run `phiproxy encrypt` first", col.Ident(), t.colType)
	}
	qcol := pgx.Identifier{col.Name}.Sanitize()
	prefix := fmt.Sprintf(`'\x%x'::bytea`, crypto.KeyPrefix(cipher.PrimaryKeyID()))
	p := &pass{t: t,
		pending: fmt.Sprintf("t.%s IS NOT NULL AND substring(t.%s from 1 for %d) <> %s", qcol, qcol, keyPrefixLen, prefix),
		src:     "t." + qcol, set: qcol + " = v.val", valType: "bytea[]",
		convert: func(src []byte) (any, error) {
			pt, err := cipher.Decrypt(src)
			if err != nil {
				return nil, err
			}
			out, err := cipher.AppendEncrypt(nil, pt)
			clear(pt)
			return out, err
		},
	}
	var total int64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s t WHERE %s", t.rel, p.pending)).Scan(&total); err != nil {
		return Result{}, err
	}
	var res Result
	batches := 0
	for i := 0; i < 5; i++ {
		what := col.Ident() + ": reencrypt"
		if i > 0 {
			what += fmt.Sprintf(" (pass %d)", i+1)
		}
		prog := newProgress(&o, what, total)
		n, err := p.run(ctx, conn, &o, prog, "reencrypt", &batches)
		res.Rows += n
		if err != nil {
			return res, err
		}
		prog.finish()
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s t WHERE %s", t.rel, p.pending)).Scan(&total); err != nil {
			return res, err
		}
		if total == 0 {
			break
		}
	}
	res.Elapsed = time.Since(start)
	if total > 0 {
		return res, fmt.Errorf("%s: %d values are still not under primary key id %d after 5 passes: are all proxies reloaded (SIGHUP) since `keys rotate`? Run reencrypt again once they are",
			col.Ident(), total, cipher.PrimaryKeyID())
	}
	o.printf("%s: every value is under primary key id %d (%d rewritten in %s)", col.Ident(), cipher.PrimaryKeyID(), res.Rows, res.Elapsed.Round(time.Millisecond))
	return res, nil
}

// CountUnderKey counts the values of col encrypted under key id (their
// envelope starts with crypto.KeyPrefix(id)). A column that is not bytea
// holds no envelope and counts 0.
func CountUnderKey(ctx context.Context, conn *pgx.Conn, col config.Column, id uint32) (int64, error) {
	rel := pgx.Identifier{col.Schema, col.Table}.Sanitize()
	typ, _, err := columnType(ctx, conn, rel, col.Name)
	if err != nil || typ != "bytea" {
		return 0, err
	}
	qcol := pgx.Identifier{col.Name}.Sanitize()
	var n int64
	err = conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE substring(%s from 1 for %d) = $1", rel, qcol, keyPrefixLen),
		crypto.KeyPrefix(id)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("%s: counting values under key id %d: %w", col.Ident(), id, err)
	}
	return n, nil
}
