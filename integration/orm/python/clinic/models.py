"""The clinic app's models for phiproxy's Django stack: an existing schema,
so the models are unmanaged (managed = False), as inspectdb writes them."""

from django.db import models


class Patient(models.Model):
    name = models.TextField()
    ssn = models.TextField(unique=True, null=True)
    diagnosis = models.TextField(null=True)
    notes = models.CharField(max_length=40, null=True)
    dob = models.DateField(null=True)
    active = models.BooleanField(default=True)

    class Meta:
        managed = False
        db_table = "patients"


class Visit(models.Model):
    patient = models.ForeignKey(Patient, to_field="ssn", db_column="patient_ssn", db_constraint=False,
                                on_delete=models.DO_NOTHING, related_name="visits")
    visited_on = models.DateField()
    reason = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "visits"
