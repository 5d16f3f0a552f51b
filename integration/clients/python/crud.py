"""crud.py drives psycopg 3 through phiproxy's PHI path for the integration
tests. It prints one line per result so the Go test can compare a run
through the proxy (tables patients/visits) with a run direct on the
plaintext twin (patients_plain/visits_plain). Run it with Debian's
/usr/bin/python3 (python3-psycopg).

  crud.py crud DSN SUFFIX BASE
  crud.py canary DSN ID SSN DIAGNOSIS DOB MRN
"""

import datetime
import sys

import psycopg


def fmt(v):
    if v is None:
        return "NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        s = "BYTEA:" + bytes(v).hex()
    elif isinstance(v, datetime.date):
        s = v.isoformat()
    else:
        s = str(v)
    # Long values print as their length and ends, to keep the output short.
    return s if len(s) <= 64 else f"{s[:8]}…{s[-8:]}({len(s)})"


def show(label, cur):
    fields = ",".join(f"{d.name}:{d.type_code}" for d in (cur.description or []))
    print(f"{label}: {cur.statusmessage} {cur.rowcount} fields={fields}")
    if cur.description:
        for row in cur.fetchall():
            print("  " + "|".join(fmt(v) for v in row))


def crud(conn, suffix, base):
    P, V = "patients" + suffix, "visits" + suffix
    cols = "id, name, ssn, diagnosis, dob, mrn"
    ins = f"INSERT INTO {P} ({cols}) VALUES (%s, %s, %s, %s, %s, %s)"

    def ssn(i):
        return f"{base}-00-000{i}"

    d = datetime.date
    cur = conn.cursor()
    # Server-side parameters (psycopg 3's default), unnamed statements.
    cur.execute(ins, (base + 1, "py-1", ssn(1), "flu", d(1980, 1, 2), 4242))
    show("insert", cur)
    # prepare=True: a named server-side prepared statement.
    cur.execute(ins, (base + 2, "py-2", ssn(2), "asthma", d(1990, 12, 31), 7), prepare=True)
    show("insert prepared", cur)
    cur.execute(ins, (base + 3, "py-3", None, None, None, None), prepare=True)
    show("insert prepared nulls", cur)
    # executemany: pipelined when libpq supports it.
    cur.executemany(ins, [
        (base + 4, "py-4", ssn(4), "ünïcödé \"q\" 'x'", d(2000, 2, 29), -9223372036854775808),
        (base + 5, "py-5", ssn(5), "x" * 5000, d(1970, 1, 1), 0),
        (base + 6, "py-6", ssn(6), "", d(1, 1, 1), 9223372036854775807),
    ])
    show("executemany", cur)
    cur.executemany(f"INSERT INTO {V} (id, patient_ssn, visited_on) VALUES (%s, %s, %s)",
                    [(base + 1, ssn(1), d(2024, 1, 1)), (base + 2, ssn(2), d(2024, 1, 2))])
    show("executemany visits", cur)

    sel = f"SELECT {cols} FROM {P} WHERE id BETWEEN %s AND %s ORDER BY id"
    cur.execute(sel, (base, base + 99))
    show("select", cur)
    for i in (2, 1, 2):
        cur.execute(f"SELECT id, diagnosis, dob FROM {P} WHERE ssn = %s", (ssn(i),), prepare=True)
        show("lookup ssn prepared", cur)
    cur.execute(f"SELECT id, name FROM {P} WHERE mrn = %s AND id BETWEEN %s AND %s", (4242, base, base + 99))
    show("lookup mrn", cur)
    cur.execute(f"SELECT id FROM {P} WHERE ssn = %s", ("nobody",))
    show("lookup no match", cur)
    cur.execute(f"SELECT p.id, v.patient_ssn, v.visited_on FROM {P} p JOIN {V} v ON v.patient_ssn = p.ssn "
                f"WHERE p.id BETWEEN %s AND %s ORDER BY p.id", (base, base + 99))
    show("join visits", cur)

    # The binary format: results (and, with %b, parameters) in binary.
    bcur = conn.cursor(binary=True)
    bcur.execute(sel, (base, base + 99))
    show("select binary", bcur)
    bcur.execute(f"SELECT id, ssn, dob, mrn FROM {P} WHERE ssn = %b", (ssn(5),))
    show("lookup binary", bcur)
    bcur.execute(f"INSERT INTO {P} ({cols}) VALUES (%b, %b, %b, %b, %b, %b) RETURNING ssn, diagnosis, dob, mrn",
                 (base + 7, "py-7", ssn(7), "binary", d(2012, 12, 12), 777))
    show("insert binary", bcur)
    bcur.execute(f"SELECT id FROM {P} WHERE mrn = %b AND id > %b", (777, base))
    show("lookup mrn binary", bcur)
    cur.execute(f"SELECT {cols} FROM {P} WHERE id = %s", (base + 7,), binary=True)
    show("execute binary=True", cur)

    cur.execute(f"UPDATE {P} SET diagnosis = %s, dob = %s WHERE ssn = %s", ("cured", d(1980, 1, 3), ssn(1)))
    show("update", cur)
    cur.execute(f"DELETE FROM {P} WHERE ssn = %s RETURNING id, ssn, diagnosis", (ssn(4),))
    show("delete", cur)
    cur.execute(sel, (base, base + 99))
    show("select final", cur)


def canary(conn, id_, ssn, diagnosis, dob, mrn):
    cur = conn.cursor()
    cur.execute("INSERT INTO patients (id, name, ssn, diagnosis, dob, mrn) VALUES (%s, %s, %s, %s, %s, %s)",
                (id_, "canary-python", ssn, diagnosis, datetime.date.fromisoformat(dob), int(mrn)), prepare=True)
    cur.executemany("INSERT INTO visits (id, patient_ssn) VALUES (%s, %s)", [(id_, ssn)])
    cur.execute("SELECT ssn, diagnosis, dob, mrn FROM patients WHERE id = %s", (id_,), binary=True)
    row = cur.fetchone()
    cur.execute("SELECT patient_ssn FROM visits WHERE patient_ssn = %s", (ssn,))
    print("|".join(fmt(v) for v in (*row, cur.fetchone()[0])))


def main():
    mode, dsn, *rest = sys.argv[1:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mode == "crud":
            crud(conn, rest[0], int(rest[1]))
        elif mode == "canary":
            canary(conn, int(rest[0]), *rest[1:5])
        else:
            raise SystemExit("usage: crud.py crud|canary DSN ...")


if __name__ == "__main__":
    try:
        main()
    except psycopg.Error as e:
        print(f"ERROR {e.sqlstate} {e}", file=sys.stderr)
        sys.exit(1)
