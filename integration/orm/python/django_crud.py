"""Django (Debian python3-django, psycopg2) as its users write it, for
phiproxy's ORM suite (integration/orm_test.go): migrate and the database
introspection and inspectdb at startup, bulk_create, __in lists,
select_related over a foreign key to the shared-key column, annotate(Count)
on an unmanaged model, atomic() savepoints, update_or_create and
ignore_conflicts, bulk_update (a CASE cast to varchar(40)), iterator() (a
server-side cursor WITH HOLD), and the refusals. The models are the clinic
app's (clinic/models.py).

  django_crud.py DSN phi|plain

It prints one JSON object per line; the test compares the run through
phiproxy with the run on the plaintext twin.
"""

import datetime
import io
import json
import os
import sys
import urllib.parse

import django
from django.conf import settings


def configure(dsn):
    u = urllib.parse.urlsplit(dsn)
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": u.path.lstrip("/"), "USER": u.username, "PASSWORD": u.password,
            "HOST": u.hostname, "PORT": u.port,
            "OPTIONS": {"sslmode": "disable"},
        }},
        INSTALLED_APPS=["django.contrib.contenttypes", "clinic"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
    )
    django.setup()


def put(**kv):
    print(json.dumps(kv, ensure_ascii=False, default=str), flush=True)


def row(p):
    return {"id": p.id, "name": p.name, "ssn": p.ssn, "diagnosis": p.diagnosis, "notes": p.notes,
            "dob": p.dob.isoformat() if p.dob else None, "active": p.active}


def main(dsn, mode):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    configure(dsn)
    from django.core.management import call_command
    from django.db import IntegrityError, connection, transaction
    from django.db.models import Count, Min, Q
    from django.db.utils import DatabaseError

    from clinic.models import Patient, Visit

    sent = []  # statements Django sent inside execute_wrapper(record)

    def record(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    # Startup: migrate (the app's models are unmanaged: no DDL for them),
    # then what inspectdb reads.
    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        desc = connection.introspection.get_table_description(cur, "patients")
        put(columns=[[d.name, connection.introspection.get_field_type(d.type_code, d), d.null_ok] for d in desc])
        cons = connection.introspection.get_constraints(cur, "patients")
        put(unique=sorted(c["columns"] for c in cons.values() if c["unique"]))
        put(constraints=sorted([sorted(k for k, v in c.items() if v is True), c["columns"]] for c in cons.values()))
    out = io.StringIO()
    call_command("inspectdb", "patients", "visits", stdout=out)
    put(inspectdb=[l for l in out.getvalue().splitlines() if l.strip() and not l.startswith("#")])

    d = datetime.date
    created = Patient.objects.bulk_create([
        Patient(name="Ada", ssn="111-11-1111", diagnosis="flu", notes="first visit", dob=d(1980, 1, 2)),
        Patient(name="Bob", ssn="222-22-2222", diagnosis=None, notes="ünïcödé \"q\" 'x'", dob=d(1975, 6, 30)),
        Patient(name="Cy", ssn="333-33-3333", diagnosis="asthma", notes=None, dob=None),
        Patient(name="Di", ssn="444-44-4444", diagnosis="flu", notes="", dob=d(2000, 2, 29)),
        Patient(name="Ed", ssn=None, diagnosis="none", notes="no ssn", dob=d(1999, 12, 31)),
    ])
    put(created=[row(p) for p in created])
    Visit.objects.bulk_create([
        Visit(patient_id="111-11-1111", visited_on=d(2024, 1, 5), reason="checkup"),
        Visit(patient_id="222-22-2222", visited_on=d(2024, 2, 6)),
        Visit(patient_id="111-11-1111", visited_on=d(2024, 3, 7), reason="follow-up"),
        Visit(patient_id="999-99-9999", visited_on=d(2024, 4, 8), reason="walk-in"),
    ])
    gus = Patient.objects.create(name="Gus", ssn="777-77-7777", diagnosis="gout", dob=d(1966, 3, 4))
    put(create=row(gus))

    put(get=row(Patient.objects.get(ssn="222-22-2222")))
    put(first=Patient.objects.filter(ssn="000-00-0000").first())
    put(exists=Patient.objects.filter(ssn="333-33-3333").exists())
    put(in_list=[row(p) for p in Patient.objects.filter(ssn__in=["111-11-1111", "444-44-4444", "000-00-0000"]).order_by("id")])
    put(nulls=list(Patient.objects.filter(Q(diagnosis__isnull=True) | Q(dob__isnull=True)).order_by("id").values_list("id", flat=True)))
    put(exclude=list(Patient.objects.exclude(ssn="111-11-1111").order_by("id").values_list("name", flat=True)))
    put(select_related=[[v.id, v.patient.name, v.patient.ssn, v.visited_on.isoformat(), v.reason]
                        for v in Visit.objects.select_related("patient").filter(patient__ssn__in=["111-11-1111", "222-22-2222"]).order_by("id")])
    ada = Patient.objects.get(ssn="111-11-1111")
    put(related=[[v.id, v.visited_on.isoformat(), v.reason] for v in ada.visits.order_by("id")])
    with connection.execute_wrapper(record):
        put(annotate=[[p.id, p.ssn, p.n] for p in Patient.objects.annotate(n=Count("visits")).order_by("id")])
    put(annotate_grouped_by_every_column=any('GROUP BY "patients"."id", "patients"."name", "patients"."ssn", "patients"."diagnosis"' in q for q in sent))
    put(values_count=list(Visit.objects.values("patient_id").annotate(n=Count("id"), first=Min("id")).order_by("-n", "first")
                          .values_list("patient_id", "n")))

    # atomic() with a nested atomic() (a savepoint) rolled back, and a
    # unique violation inside a savepoint.
    with transaction.atomic():
        Patient.objects.filter(ssn="111-11-1111").update(diagnosis="bronchitis")
        try:
            with transaction.atomic():
                Patient.objects.filter(ssn="111-11-1111").update(notes="rolled back")
                raise RuntimeError("roll back to the savepoint")
        except RuntimeError:
            pass
        try:
            with transaction.atomic():
                Patient.objects.create(name="Dup", ssn="222-22-2222")
        except IntegrityError as e:
            put(duplicate_ssn=e.__cause__.pgcode)
        bob = Patient.objects.select_for_update().get(ssn="222-22-2222")
        bob.diagnosis, bob.dob = "cold", d(1975, 7, 1)
        bob.save()
    put(after_transaction=[row(p) for p in Patient.objects.filter(ssn__in=["111-11-1111", "222-22-2222"]).order_by("id")])

    # Upserts: update_or_create, get_or_create, bulk_create(ignore_conflicts).
    p, made = Patient.objects.update_or_create(ssn="111-11-1111", defaults={"diagnosis": "pneumonia", "notes": "upserted"})
    put(update_or_create=[row(p), made])
    p, made = Patient.objects.update_or_create(ssn="666-66-6666", defaults={"name": "Fay", "diagnosis": "migraine", "notes": "new", "dob": d(1990, 9, 9)})
    put(update_or_create=[row(p), made])
    p, made = Patient.objects.get_or_create(ssn="333-33-3333", defaults={"name": "Dup"})
    put(get_or_create=[row(p), made])
    Patient.objects.bulk_create([Patient(name="Dup", ssn="444-44-4444"), Patient(name="Ivy", ssn="123-45-6789")], ignore_conflicts=True)
    cy = Patient.objects.get(ssn="333-33-3333")
    cy.diagnosis, cy.active = "asthma, mild", False
    cy.save(update_fields=["diagnosis", "active"])
    put(updated=Patient.objects.filter(ssn="444-44-4444").update(notes="updated", diagnosis="cold"))
    put(deleted_visits=Visit.objects.filter(patient_id="999-99-9999").delete()[0])
    objs = list(Patient.objects.filter(ssn__in=["123-45-6789", "777-77-7777"]).order_by("id"))
    for o in objs:
        # Longer than the CharField's 40: bulk_update casts the CASE to
        # varchar(40), and PostgreSQL truncates.
        o.notes = "bulk update of " + o.name + ", " + "x" * 40
    sent.clear()
    with connection.execute_wrapper(record):
        Patient.objects.bulk_update(objs, ["notes"])
    put(bulk_update_sent_case_cast=any("CAST(CASE WHEN" in q and "AS varchar(40))" in q for q in sent))
    put(bulk_update=list(Patient.objects.filter(ssn__in=["123-45-6789", "777-77-7777"]).order_by("id").values_list("notes", flat=True)))

    # Streaming: iterator() runs a server-side cursor (WITH HOLD outside
    # a transaction), and chunk_size fetches.
    put(iterator=[row(p) for p in Patient.objects.filter(active=True).order_by("id").iterator(chunk_size=2)])
    with transaction.atomic():
        put(iterator_in_atomic=[[p["id"], p["ssn"]] for p in Patient.objects.values("id", "ssn").order_by("id").iterator(chunk_size=3)])

    if mode == "phi":
        for name, qs in [
            ("django order_by('ssn')", Patient.objects.order_by("ssn")),
            ("django filter(dob__gt=…)", Patient.objects.filter(dob__gt=d(1980, 1, 1))),
            ("django filter(ssn__startswith=…)", Patient.objects.filter(ssn__startswith="111")),
            ("django filter(notes__icontains=…)", Patient.objects.filter(notes__icontains="visit")),
        ]:
            try:
                list(qs)
                put(refused=name, sqlstate="none")
            except DatabaseError as e:
                put(refused=name, sqlstate=e.__cause__.pgcode)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
