"""cursor.py drives psycopg 3 server-side cursors (conn.cursor(name=...))
through phiproxy for the integration tests: DECLARE … CURSOR with the
parameters bound server-side, then FETCH FORWARD itersize rows at a time
as the cursor is iterated, in a transaction and WITH HOLD in autocommit,
in text and in binary. One line per row, so that the Go test can compare
a run through the proxy (patients) with one direct on the plaintext twin
(patients_plain). Run it with Debian's /usr/bin/python3 (python3-psycopg).

  cursor.py DSN SUFFIX BASE
"""

import datetime
import sys

import psycopg


def fmt(v):
    if v is None:
        return "NULL"
    if isinstance(v, datetime.date):
        return v.isoformat()
    return str(v)


def show(label, rows):
    print(f"{label}: {len(rows)} rows")
    for row in rows:
        print("  " + "|".join(fmt(v) for v in row))


def run(dsn, suffix, base):
    P = "patients" + suffix
    cols = "id, name, ssn, diagnosis, dob, mrn"
    d = datetime.date
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            f"INSERT INTO {P} ({cols}) VALUES (%s, %s, %s, %s, %s, %s)",
            [(base + i, f"cur-{i}", f"{base}-00-000{i % 3}", "flu" if i % 2 else None,
              d(1980, 1, i), 100 + i) for i in range(1, 8)])
        sel = f"SELECT {cols} FROM {P} WHERE id BETWEEN %s AND %s ORDER BY id"

        # In a transaction, as Django's iterator() and SQLAlchemy's
        # stream_results use them: iterate itersize rows per FETCH.
        with conn.transaction():
            with conn.cursor(name="c") as cur:
                cur.itersize = 2
                cur.execute(sel, (base, base + 99))
                show("named cursor", list(cur))
        # A lookup on a PHI column inside the cursor's query.
        with conn.transaction():
            with conn.cursor(name="lookup") as cur:
                cur.execute(f"SELECT id, ssn, mrn FROM {P} WHERE ssn = %s ORDER BY id", (f"{base}-00-0001",))
                show("named cursor lookup", cur.fetchmany(2) + cur.fetchall())
        # WITH HOLD in autocommit: the cursor outlives the DECLARE's own
        # transaction.
        with conn.cursor(name="held", withhold=True) as cur:
            cur.itersize = 3
            cur.execute(sel, (base, base + 99))
            show("named cursor with hold", list(cur))
        # Binary results: FETCH through the extended protocol in binary.
        with conn.transaction():
            with conn.cursor(name="bin", binary=True) as cur:
                cur.execute(sel, (base, base + 99))
                first = cur.fetchone()
                cur.scroll(2)
                show("named cursor binary", [first] + cur.fetchall())


if __name__ == "__main__":
    try:
        run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    except psycopg.Error as e:
        print(f"ERROR {e.sqlstate} {e}", file=sys.stderr)
        sys.exit(1)
