"""psycopg 3 (Debian python3-psycopg) as the data layer of applications
without an ORM, for phiproxy's ORM suite (integration/orm_test.go):
executemany with returning, COPY, = ANY lists, a join on the shared-key
column, conn.transaction() blocks nested as savepoints, an upsert, a named
(server-side) cursor, pipeline mode, and statements prepared on the server
(prepare_threshold: 0 prepares every statement, the default after five
executions), with the refusals.

  psycopg3.py DSN phi|plain

It prints one JSON object per line; the test compares the run through
phiproxy with the run on the plaintext twin.
"""

import datetime
import json
import sys

import psycopg
from psycopg.rows import dict_row

COLS = "id, name, ssn, diagnosis, notes, dob, active"
D = datetime.date

SEED = [
    ("Ada", "111-11-1111", "flu", "first visit", D(1980, 1, 2)),
    ("Bob", "222-22-2222", None, "ünïcödé \"q\" 'x'", D(1975, 6, 30)),
    ("Cy", "333-33-3333", "asthma", None, None),
    ("Di", "444-44-4444", "flu", "", D(2000, 2, 29)),
    ("Ed", None, "none", "no ssn", D(1999, 12, 31)),
]


def put(**kv):
    print(json.dumps(kv, ensure_ascii=False, default=str), flush=True)


def rows(cur):
    return [list(r.values()) if isinstance(r, dict) else list(r) for r in cur.fetchall()]


def main(dsn, mode):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.prepare_threshold = 0  # every statement prepared on the server
        with conn.cursor() as cur:
            cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'patients' ORDER BY ordinal_position")
            put(columns=rows(cur))
            cur.executemany(f"INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES (%s, %s, %s, %s, %s) RETURNING {COLS}", SEED, returning=True)
            created = []
            while True:
                created += rows(cur)
                if not cur.nextset():
                    break
            put(executemany=created)
            with cur.copy("COPY visits (patient_ssn, visited_on, reason) FROM STDIN") as cp:
                for v in [("111-11-1111", D(2024, 1, 5), "checkup"), ("222-22-2222", D(2024, 2, 6), None),
                          ("111-11-1111", D(2024, 3, 7), "follow-up"), ("999-99-9999", D(2024, 4, 8), "walk-in")]:
                    cp.write_row(v)
            for ssn in ["222-22-2222", "000-00-0000"]:
                cur.execute(f"SELECT {COLS} FROM patients WHERE ssn = %s", (ssn,))
                put(by_ssn=rows(cur))
            cur.execute(f"SELECT {COLS} FROM patients WHERE ssn = ANY(%s) ORDER BY id", (["111-11-1111", "444-44-4444", "000-00-0000"],))
            put(any=rows(cur))
            cur.execute(f"SELECT {COLS} FROM patients WHERE ssn IN (%s, %s) ORDER BY id", ("333-33-3333", "444-44-4444"))
            put(in_list=rows(cur))
            cur.execute("SELECT v.id, p.name, p.ssn, v.visited_on FROM visits v JOIN patients p ON p.ssn = v.patient_ssn ORDER BY v.id")
            put(join=rows(cur))
            cur.execute("SELECT count(*), count(diagnosis), count(DISTINCT ssn) FROM patients")
            put(counts=rows(cur))

    # The default prepare threshold: the sixth execution of a statement is
    # prepared on the server.
    with psycopg.connect(dsn) as conn:
        got = []
        for i in range(7):
            got += conn.execute("SELECT id, ssn, dob FROM patients WHERE ssn = %s", (SEED[i % 4][1],)).fetchall()
        put(prepare_threshold_default=[list(r) for r in got])
        conn.commit()

        # Transactions: a nested transaction() block is a savepoint.
        with conn.transaction():
            conn.execute("UPDATE patients SET diagnosis = %s WHERE ssn = %s", ("bronchitis", "111-11-1111"))
            try:
                with conn.transaction():
                    conn.execute("UPDATE patients SET notes = %s WHERE ssn = %s", ("rolled back", "111-11-1111"))
                    conn.execute("INSERT INTO patients (name, ssn) VALUES (%s, %s)", ("Dup", "222-22-2222"))
            except psycopg.errors.UniqueViolation as e:
                put(duplicate_ssn=e.sqlstate)
            conn.execute("UPDATE patients SET diagnosis = %s, dob = %s WHERE ssn = ANY(%s)", ("cold", D(1975, 7, 1), ["222-22-2222"]))
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(f"SELECT {COLS} FROM patients WHERE ssn = ANY(%s) ORDER BY id", (["111-11-1111", "222-22-2222"],))
        put(after_transaction=rows(cur))
        conn.commit()

        # An upsert, in pipeline mode.
        with conn.pipeline():
            c1 = conn.execute(f"INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES (%s, %s, %s, %s, %s) "
                              f"ON CONFLICT (ssn) DO UPDATE SET diagnosis = EXCLUDED.diagnosis, notes = EXCLUDED.notes RETURNING {COLS}",
                              ("Ada", "111-11-1111", "pneumonia", "upserted", D(1980, 1, 2)))
            c2 = conn.execute(f"INSERT INTO patients (name, ssn) VALUES (%s, %s) ON CONFLICT (ssn) DO NOTHING RETURNING {COLS}", ("Dup", "333-33-3333"))
            c3 = conn.execute("UPDATE patients SET notes = %s, diagnosis = %s WHERE ssn = %s", ("updated", "cold", "444-44-4444"))
            c4 = conn.execute("DELETE FROM visits WHERE patient_ssn = %s", ("999-99-9999",))
        put(pipeline=[rows(c1), rows(c2), c3.rowcount, c4.rowcount])
        conn.commit()

        # Streaming: a named (server-side) cursor.
        with conn.cursor(name="export") as nc:
            nc.itersize = 2
            nc.execute(f"SELECT {COLS} FROM patients WHERE active ORDER BY id")
            put(named_cursor=[list(r) for r in nc])
        conn.commit()

        if mode == "phi":
            for name, q in [
                ("psycopg ORDER BY ssn", f"SELECT {COLS} FROM patients ORDER BY ssn"),
                ("psycopg dob >", f"SELECT {COLS} FROM patients WHERE dob > '1980-01-01'"),
                ("psycopg ssn LIKE", f"SELECT {COLS} FROM patients WHERE ssn LIKE '111%%'"),
            ]:
                try:
                    conn.execute(q).fetchall()
                    put(refused=name, sqlstate="none")
                except psycopg.Error as e:
                    put(refused=name, sqlstate=e.sqlstate)
                conn.rollback()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
