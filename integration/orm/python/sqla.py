"""SQLAlchemy (Debian python3-sqlalchemy, psycopg2) as its users write it,
for phiproxy's ORM suite (integration/orm_test.go): reflection and
create_all at startup, add_all bulk inserts, in_() lists, joins on the
shared-key column, begin_nested savepoints, on_conflict_do_update upserts,
yield_per streaming (a server-side cursor), and the refusals.

  sqla.py DSN phi|plain

It prints one JSON object per line; the test compares the run through
phiproxy with the run on the plaintext twin.
"""

import datetime
import json
import sys

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, declarative_base, relationship

Base = declarative_base()


class Patient(Base):
    __tablename__ = "patients"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text, nullable=False)
    ssn = sa.Column(sa.Text, unique=True)
    diagnosis = sa.Column(sa.Text)
    notes = sa.Column(sa.Text)
    dob = sa.Column(sa.Date)
    active = sa.Column(sa.Boolean, nullable=False, server_default=sa.true())
    visits = relationship("Visit", back_populates="patient", order_by="Visit.id")


class Visit(Base):
    __tablename__ = "visits"
    id = sa.Column(sa.Integer, primary_key=True)
    patient_ssn = sa.Column(sa.Text, sa.ForeignKey("patients.ssn"), nullable=False)
    visited_on = sa.Column(sa.Date, nullable=False)
    reason = sa.Column(sa.Text)
    patient = relationship("Patient", back_populates="visits")


def jsonable(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return v


def row(p):
    return {c: jsonable(getattr(p, c)) for c in ("id", "name", "ssn", "diagnosis", "notes", "dob", "active")}


def put(**kv):
    print(json.dumps(kv, ensure_ascii=False), flush=True)


SEED = [
    dict(name="Ada", ssn="111-11-1111", diagnosis="flu", notes="first visit", dob=datetime.date(1980, 1, 2)),
    dict(name="Bob", ssn="222-22-2222", diagnosis=None, notes="ünïcödé \"q\" 'x'", dob=datetime.date(1975, 6, 30)),
    dict(name="Cy", ssn="333-33-3333", diagnosis="asthma", notes=None, dob=None),
    dict(name="Di", ssn="444-44-4444", diagnosis="flu", notes="", dob=datetime.date(2000, 2, 29)),
    dict(name="Ed", ssn=None, diagnosis="none", notes="no ssn", dob=datetime.date(1999, 12, 31)),
]


def main(dsn, mode):
    engine = sa.create_engine(dsn.replace("postgres://", "postgresql+psycopg2://", 1), future=True)

    # Startup: create_all (checkfirst: the tables exist) and reflection.
    Base.metadata.create_all(engine)
    insp = sa.inspect(engine)
    put(columns=[[c["name"], str(c["type"]), c["nullable"]] for c in insp.get_columns("patients")])
    put(unique=[u["column_names"] for u in insp.get_unique_constraints("patients")])
    reflected = sa.Table("patients", sa.MetaData(), autoload_with=engine)

    with Session(engine) as s:
        ps = [Patient(**d) for d in SEED]
        s.add_all(ps)
        s.flush()
        s.add_all([
            Visit(patient_ssn="111-11-1111", visited_on=datetime.date(2024, 1, 5), reason="checkup"),
            Visit(patient_ssn="222-22-2222", visited_on=datetime.date(2024, 2, 6)),
            Visit(patient_ssn="111-11-1111", visited_on=datetime.date(2024, 3, 7), reason="follow-up"),
            Visit(patient_ssn="999-99-9999", visited_on=datetime.date(2024, 4, 8), reason="walk-in"),
        ])
        s.commit()
        put(created=[row(p) for p in ps])

    with engine.begin() as conn:
        conn.execute(reflected.insert(), [
            dict(name="Gus", ssn="777-77-7777", diagnosis="gout", notes=None, dob=datetime.date(1966, 3, 4)),
            dict(name="Hal", ssn="888-88-8888", diagnosis=None, notes="core executemany", dob=None),
        ])
        got = conn.execute(sa.select(reflected).where(reflected.c.ssn == "777-77-7777")).mappings().one()
        put(core={k: jsonable(v) for k, v in got.items()})

    with Session(engine) as s:
        p = s.execute(sa.select(Patient).where(Patient.ssn == "222-22-2222")).scalar_one()
        put(by_ssn=row(p))
        p = s.execute(sa.select(Patient).filter_by(ssn="000-00-0000")).scalar_one_or_none()
        put(by_unknown_ssn=p)
        got = s.execute(sa.select(Patient).where(Patient.ssn.in_(["111-11-1111", "444-44-4444", "000-00-0000"])).order_by(Patient.id)).scalars()
        put(in_list=[row(p) for p in got])
        got = s.execute(sa.select(Patient.id).where(Patient.diagnosis.is_(None) | Patient.dob.is_(None)).order_by(Patient.id)).scalars()
        put(nulls=list(got))
        got = s.execute(
            sa.select(Visit.id, Patient.name, Patient.ssn, Visit.visited_on, Visit.reason)
            .join(Patient, Patient.ssn == Visit.patient_ssn)
            .order_by(Visit.id)
        ).all()
        put(join=[[jsonable(v) for v in r] for r in got])
        ada = s.execute(sa.select(Patient).where(Patient.ssn == "111-11-1111")).scalar_one()
        put(relationship=[[v.id, jsonable(v.visited_on), v.reason] for v in ada.visits])
        got = s.execute(
            sa.select(Patient.ssn, sa.func.count(Visit.id))
            .join(Visit, Visit.patient_ssn == Patient.ssn)
            .group_by(Patient.ssn)
            .order_by(sa.func.count(Visit.id).desc(), sa.func.min(Visit.id))
        ).all()
        put(group_by_ssn=[list(r) for r in got])

    # A transaction with a savepoint rolled back (begin_nested) and one
    # that fails on the server.
    with Session(engine) as s:
        ada = s.execute(sa.select(Patient).where(Patient.ssn == "111-11-1111")).scalar_one()
        ada.diagnosis = "bronchitis"
        sp = s.begin_nested()
        ada.notes = "rolled back"
        s.flush()
        sp.rollback()
        s.execute(sa.update(Patient).where(Patient.ssn.in_(["222-22-2222"])).values(diagnosis="cold", dob=datetime.date(1975, 7, 1)))
        s.commit()
        got = s.execute(sa.select(Patient).where(Patient.ssn.in_(["111-11-1111", "222-22-2222"])).order_by(Patient.id)).scalars()
        put(after_transaction=[row(p) for p in got])
    with Session(engine) as s:
        s.add(Patient(name="Dup", ssn="111-11-1111"))
        try:
            s.commit()
            put(duplicate_ssn="committed")
        except exc.IntegrityError as e:
            s.rollback()
            put(duplicate_ssn=e.orig.pgcode)

    # Upserts.
    with Session(engine) as s:
        stmt = insert(Patient).values([
            dict(name="Ada", ssn="111-11-1111", diagnosis="pneumonia", notes="upserted", dob=datetime.date(1980, 1, 2)),
            dict(name="Fay", ssn="666-66-6666", diagnosis="migraine", notes="new", dob=datetime.date(1990, 9, 9)),
        ])
        stmt = stmt.on_conflict_do_update(index_elements=[Patient.ssn], set_=dict(diagnosis=stmt.excluded.diagnosis, notes=stmt.excluded.notes))
        got = s.execute(stmt.returning(Patient.id, Patient.ssn, Patient.diagnosis)).all()
        put(upserted=[list(r) for r in got])
        got = s.execute(insert(Patient).values(name="Dup", ssn="333-33-3333").on_conflict_do_nothing().returning(Patient.id)).all()
        put(do_nothing=[list(r) for r in got])
        cy = s.get(Patient, 3)
        cy.diagnosis, cy.active = "asthma, mild", False
        n = s.execute(sa.update(Patient).where(Patient.ssn == "444-44-4444").values(notes="updated", diagnosis="cold")).rowcount
        put(updated=n)
        n = s.execute(sa.delete(Visit).where(Visit.patient_ssn == "999-99-9999")).rowcount
        put(deleted_visits=n)
        hal = s.execute(sa.select(Patient).where(Patient.ssn == "888-88-8888")).scalar_one()
        s.delete(hal)
        s.commit()

    # Streaming: yield_per runs a server-side cursor with psycopg2.
    with Session(engine) as s:
        got = s.execute(sa.select(Patient).where(Patient.active).order_by(Patient.id).execution_options(yield_per=2)).scalars()
        put(yield_per=[row(p) for p in got])
    with engine.connect() as conn:
        res = conn.execution_options(stream_results=True).execute(sa.select(reflected.c.id, reflected.c.ssn, reflected.c.dob).order_by(reflected.c.id))
        put(stream_results=[[[jsonable(v) for v in r] for r in part] for part in res.partitions(3)])

    if mode == "phi":
        for name, q in [
            ("sqlalchemy order_by(Patient.ssn)", sa.select(Patient).order_by(Patient.ssn)),
            ("sqlalchemy Patient.dob > date", sa.select(Patient).where(Patient.dob > datetime.date(1980, 1, 1))),
            ("sqlalchemy Patient.ssn.like()", sa.select(Patient).where(Patient.ssn.like("111%"))),
            ("sqlalchemy Patient.ssn.startswith()", sa.select(Patient).where(Patient.ssn.startswith("111"))),
        ]:
            with Session(engine) as s:
                try:
                    s.execute(q).all()
                    put(refused=name, sqlstate="none")
                except exc.DBAPIError as e:
                    put(refused=name, sqlstate=e.orig.pgcode)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
