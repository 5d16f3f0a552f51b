// MikroORM 6 as its users write it (EntitySchema, since this is plain
// JavaScript), for phiproxy's ORM suite: the schema generator's update
// (and its diff) at startup, persist + flush (batched inserts, and the batched
// UPDATE … CASE of a flush that changes several entities), $in lists,
// transactional() with a nested
// one (a savepoint), upsert/upsertMany, findByCursor pages, a join on the
// shared-key column, and the refusals.
//
//   node mikroorm.js DSN phi|plain
'use strict';
const { MikroORM, EntitySchema } = require('@mikro-orm/postgresql');
const s = require('./scenario');

class Patient {}
class Visit {}

const PatientSchema = new EntitySchema({
  class: Patient,
  tableName: 'patients',
  properties: {
    id: { type: 'integer', primary: true, autoincrement: true },
    name: { type: 'text' },
    ssn: { type: 'text', nullable: true, unique: 'patients_ssn_key' },
    diagnosis: { type: 'text', nullable: true },
    notes: { type: 'text', nullable: true },
    dob: { type: 'date', nullable: true },
    active: { type: 'boolean', default: true },
  },
});

const VisitSchema = new EntitySchema({
  class: Visit,
  tableName: 'visits',
  properties: {
    id: { type: 'integer', primary: true, autoincrement: true },
    patientSsn: { type: 'text', fieldName: 'patient_ssn' },
    visitedOn: { type: 'date', fieldName: 'visited_on' },
    reason: { type: 'text', nullable: true },
  },
});

s.main(async () => {
  const queries = []; // what MikroORM logs, to see the statements it sent
  const orm = await MikroORM.init({
    clientUrl: s.dsn, entities: [PatientSchema, VisitSchema], debug: ['query'], logger: (m) => queries.push(m), allowGlobalContext: true,
    discovery: { warnWhenNoEntities: false }, forceUtcTimezone: true,
    // The schema generator reads every schema: leave phiproxy's overlay out.
    schemaGenerator: { ignoreSchema: ['phiproxy_overlay'] },
  });
  // Startup: what the schema generator would change, then updateSchema
  // itself (a no-op).
  s.put('schema diff', (await orm.schema.getUpdateSchemaSQL({ wrap: false })).split('\n').filter((l) => l.trim() !== ''));
  await orm.schema.updateSchema();

  const em = orm.em.fork();
  const created = s.seed.map((p) => em.create(Patient, p));
  await em.flush();
  s.put('flush', created.map(s.row));
  for (const v of s.visits) {
    em.create(Visit, { patientSsn: v.patient_ssn, visitedOn: v.visited_on, reason: v.reason });
  }
  await em.flush();
  em.clear();

  s.put('findOne', s.row(await em.findOne(Patient, { ssn: '222-22-2222' })));
  s.put('findOne unknown', await em.findOne(Patient, { ssn: '000-00-0000' }));
  s.put('$in', (await em.find(Patient, { ssn: { $in: ['111-11-1111', '444-44-4444', '000-00-0000'] } }, { orderBy: { id: 'asc' } })).map(s.row));
  s.put('null', (await em.find(Patient, { $or: [{ diagnosis: null }, { dob: null }] }, { orderBy: { id: 'asc' } })).map((p) => p.id));
  s.put('$ne', await em.count(Patient, { ssn: { $ne: '111-11-1111' } }));
  const vs = await em.find(Visit, { patientSsn: { $in: ['111-11-1111', '222-22-2222'] } }, { orderBy: { id: 'asc' } });
  s.put('visits', vs.map((v) => [v.id, v.patientSsn, v.visitedOn, v.reason]));
  // MikroORM joins through relations to primary keys; a join on another
  // unique column is raw SQL (em.execute).
  const joined = await em.execute('select v.id, p.name, p.ssn, v.visited_on from visits v join patients p on p.ssn = v.patient_ssn where p.ssn in (?, ?) order by v.id', ['111-11-1111', '222-22-2222']);
  s.put('join', joined.map((r) => [r.id, r.name, r.ssn, r.visited_on]));
  em.clear();

  // A flush that changes several entities: MikroORM batches it as one
  // UPDATE … SET col = CASE WHEN (id = $1) THEN $2 … END.
  const two = await em.find(Patient, { ssn: { $in: ['333-33-3333', '444-44-4444'] } }, { orderBy: { id: 'asc' } });
  two[0].diagnosis = 'asthma, mild';
  two[0].active = false;
  two[1].diagnosis = 'cold';
  two[1].notes = 'updated';
  queries.length = 0;
  await em.flush();
  s.put('flush sent UPDATE … CASE', queries.some((q) => /update "patients" set .*case when/i.test(q)));
  em.clear();
  s.put('batched update', (await em.find(Patient, { ssn: { $in: ['333-33-3333', '444-44-4444'] } }, { orderBy: { id: 'asc' } })).map(s.row));

  // transactional() with a nested one (SAVEPOINT) that fails.
  await em.transactional(async (tx) => {
    const ada = await tx.findOneOrFail(Patient, { ssn: '111-11-1111' });
    ada.diagnosis = 'bronchitis';
    await tx.flush();
    try {
      await tx.transactional(async (inner) => {
        await inner.nativeUpdate(Patient, { ssn: '111-11-1111' }, { notes: 'rolled back' });
        await inner.insert(Patient, { name: 'Dup', ssn: '222-22-2222' });
      });
    } catch (e) {
      s.put('duplicate ssn', [e.name, e.code]);
    }
    await tx.nativeUpdate(Patient, { ssn: { $in: ['222-22-2222'] } }, { diagnosis: 'cold', dob: '1975-07-01' });
  });
  em.clear();
  s.put('after transaction', (await em.find(Patient, { ssn: { $in: ['111-11-1111', '222-22-2222'] } }, { orderBy: { id: 'asc' } })).map(s.row));
  em.clear();

  // Upserts.
  const up = await em.upsert(Patient, { name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia', notes: 'upserted', dob: '1980-01-02' }, { onConflictFields: ['ssn'] });
  s.put('upsert', s.row(up));
  const ups = await em.upsertMany(Patient, [
    { name: 'Fay', ssn: '666-66-6666', diagnosis: 'migraine', notes: 'new', dob: '1990-09-09' },
    { name: 'Gus', ssn: '777-77-7777', diagnosis: 'gout', notes: null, dob: '1966-03-04' },
  ], { onConflictFields: ['ssn'] });
  s.put('upsertMany', ups.map(s.row));
  s.put('nativeDelete visits', await em.nativeDelete(Visit, { patientSsn: '999-99-9999' }));
  em.clear();

  // Iteration: findByCursor pages.
  const pages = [];
  let cursor = await em.findByCursor(Patient, { active: true }, { first: 3, orderBy: { id: 'asc' } });
  for (;;) {
    pages.push(cursor.items.map(s.row));
    if (!cursor.hasNextPage) break;
    cursor = await em.findByCursor(Patient, { active: true }, { first: 3, after: cursor, orderBy: { id: 'asc' } });
  }
  s.put('findByCursor', pages);

  if (s.phi) {
    await s.refused('mikroorm orderBy: { ssn }', () => em.find(Patient, {}, { orderBy: { ssn: 'asc' } }));
    await s.refused('mikroorm dob: { $gt }', () => em.find(Patient, { dob: { $gt: '1980-01-01' } }));
    await s.refused('mikroorm ssn: { $like }', () => em.find(Patient, { ssn: { $like: '111%' } }));
  }
  await orm.close(true);
});
