from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Patient",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.TextField()),
                ("ssn", models.TextField(null=True, unique=True)),
                ("diagnosis", models.TextField(null=True)),
                ("notes", models.CharField(max_length=40, null=True)),
                ("dob", models.DateField(null=True)),
                ("active", models.BooleanField(default=True)),
            ],
            options={"db_table": "patients", "managed": False},
        ),
        migrations.CreateModel(
            name="Visit",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("visited_on", models.DateField()),
                ("reason", models.TextField(null=True)),
                ("patient", models.ForeignKey(db_column="patient_ssn", db_constraint=False,
                                              on_delete=django.db.models.deletion.DO_NOTHING,
                                              related_name="visits", to="clinic.patient", to_field="ssn")),
            ],
            options={"db_table": "visits", "managed": False},
        ),
    ]
