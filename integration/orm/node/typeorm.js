// TypeORM 0.3 as its users write it (entity schemas, since this is plain
// JavaScript), for phiproxy's ORM suite: synchronize (and the schema diff
// it and migration:generate compute) at startup, save() of many
// entities, In() lists, a relation joined on the shared-key column, a
// QueryRunner transaction with a nested one (a savepoint), upsert(),
// stream() (pg-query-stream), and the refusals.
//
//   node typeorm.js DSN phi|plain
'use strict';
require('reflect-metadata');
const { DataSource, EntitySchema, In, IsNull, MoreThan, Like, Not } = require('typeorm');
const s = require('./scenario');

// entity is an EntitySchema of a table whose key is a serial id, as every
// table of the suite's schema is.
const entity = (name, tableName, columns, relations) => new EntitySchema({
  name, tableName, relations,
  columns: { id: { type: 'int', primary: true, generated: 'increment' }, ...columns },
});

const Patient = entity('Patient', 'patients', {
  name: { type: 'text' },
  ssn: { type: 'text', nullable: true, unique: true },
  diagnosis: { type: 'text', nullable: true },
  notes: { type: 'text', nullable: true },
  dob: { type: 'date', nullable: true },
  active: { type: 'boolean', default: true },
}, {
  visits: { type: 'one-to-many', target: 'Visit', inverseSide: 'patient' },
});

const Visit = entity('Visit', 'visits', {
  patient_ssn: { type: 'text' },
  visited_on: { type: 'date' },
  reason: { type: 'text', nullable: true },
}, {
  patient: {
    type: 'many-to-one', target: 'Patient', inverseSide: 'visits', createForeignKeyConstraints: false,
    joinColumn: { name: 'patient_ssn', referencedColumnName: 'ssn' },
  },
});

s.main(async () => {
  const ds = new DataSource({ type: 'postgres', url: s.dsn, entities: [Patient, Visit], synchronize: false, logging: false });
  await ds.initialize();

  // Startup: what synchronize / migration:generate would change, then
  // synchronize itself (a no-op), and the table as TypeORM's query runner
  // reads it.
  const pending = await ds.driver.createSchemaBuilder().log();
  s.put('schema diff', pending.upQueries.map((q) => q.query));
  await ds.synchronize();
  const qr = ds.createQueryRunner();
  const table = await qr.getTable('patients');
  s.put('columns', table.columns.map((c) => [c.name, c.type, c.isNullable, c.isUnique]));
  await qr.release();

  const patients = ds.getRepository('Patient');
  const visits = ds.getRepository('Visit');
  const created = await patients.save(s.seed.map((p) => patients.create(p)));
  s.put('save', created.map(s.row));
  await visits.insert(s.visits);
  s.put('insert', (await patients.insert({ name: 'Gus', ssn: '777-77-7777', diagnosis: 'gout', dob: '1966-03-04' })).identifiers);

  s.put('findOneBy', s.row(await patients.findOneBy({ ssn: '222-22-2222' })));
  s.put('findOneBy unknown', await patients.findOneBy({ ssn: '000-00-0000' }));
  s.put('In', (await patients.find({ where: { ssn: In(['111-11-1111', '444-44-4444', '000-00-0000']) }, order: { id: 'ASC' } })).map(s.row));
  s.put('IsNull', (await patients.find({ where: [{ diagnosis: IsNull() }, { dob: IsNull() }], order: { id: 'ASC' } })).map((p) => p.id));
  s.put('Not', await patients.count({ where: { ssn: Not('111-11-1111') } }));
  s.put('exists', await patients.exists({ where: { ssn: '333-33-3333' } }));
  const vs = await visits.find({ relations: { patient: true }, order: { id: 'ASC' } });
  s.put('relations', vs.map((v) => [v.id, v.patient && v.patient.name, v.patient && v.patient.ssn, v.visited_on, v.reason]));
  const joined = await ds.createQueryBuilder('Visit', 'v').innerJoinAndSelect('v.patient', 'p')
    .where('p.ssn IN (:...ssns)', { ssns: ['111-11-1111', '222-22-2222'] }).orderBy('v.id').getMany();
  s.put('innerJoinAndSelect', joined.map((v) => [v.id, v.patient.name, v.visited_on]));
  const raw = await ds.createQueryBuilder().select('p.ssn', 'ssn').addSelect('COUNT(v.id)', 'n').from('patients', 'p')
    .innerJoin('visits', 'v', 'v.patient_ssn = p.ssn').groupBy('p.ssn').orderBy('n', 'DESC').addOrderBy('MIN(v.id)').getRawMany();
  s.put('groupBy', raw);

  // A QueryRunner transaction with a nested one (SAVEPOINT) rolled back,
  // and a unique violation inside an EntityManager transaction.
  const tx = ds.createQueryRunner();
  await tx.connect();
  await tx.startTransaction();
  await tx.manager.update('Patient', { ssn: '111-11-1111' }, { diagnosis: 'bronchitis' });
  await tx.startTransaction();
  await tx.manager.update('Patient', { ssn: '111-11-1111' }, { notes: 'rolled back' });
  await tx.rollbackTransaction();
  await tx.manager.update('Patient', { ssn: In(['222-22-2222']) }, { diagnosis: 'cold', dob: '1975-07-01' });
  await tx.commitTransaction();
  await tx.release();
  try {
    await ds.transaction(async (em) => {
      await em.insert('Patient', { name: 'Dup', ssn: '222-22-2222' });
    });
  } catch (e) {
    s.put('duplicate ssn', e.driverError.code);
  }
  s.put('after transaction', (await patients.find({ where: { ssn: In(['111-11-1111', '222-22-2222']) }, order: { id: 'ASC' } })).map(s.row));

  // Upserts.
  const up = await patients.upsert([
    { name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia', notes: 'upserted', dob: '1980-01-02' },
    { name: 'Fay', ssn: '666-66-6666', diagnosis: 'migraine', notes: 'new', dob: '1990-09-09' },
  ], { conflictPaths: ['ssn'] });
  s.put('upsert', up.identifiers);
  const cy = await patients.findOneBy({ ssn: '333-33-3333' });
  cy.diagnosis = 'asthma, mild';
  cy.active = false;
  await patients.save(cy);
  s.put('updated', (await patients.update({ ssn: '444-44-4444' }, { notes: 'updated', diagnosis: 'cold' })).affected);
  s.put('deleted visits', (await visits.delete({ patient_ssn: '999-99-9999' })).affected);

  // Streaming.
  const stream = await patients.createQueryBuilder('p').where('p.active').orderBy('p.id').stream();
  const streamed = [];
  for await (const r of stream) {
    streamed.push([r.p_id, r.p_name, r.p_ssn, r.p_diagnosis, r.p_notes, r.p_dob]);
  }
  s.put('stream', streamed);

  if (s.phi) {
    await s.refused('typeorm order: { ssn }', () => patients.find({ order: { ssn: 'ASC' } }));
    await s.refused('typeorm MoreThan(dob)', () => patients.find({ where: { dob: MoreThan('1980-01-01') } }));
    await s.refused('typeorm Like(ssn)', () => patients.find({ where: { ssn: Like('111%') } }));
    // skipUpdateIfNoValuesChanged adds WHERE (t.col IS DISTINCT FROM EXCLUDED.col OR …).
    await s.refused('typeorm upsert skipUpdateIfNoValuesChanged', () => patients.upsert(
      { name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia' }, { conflictPaths: ['ssn'], skipUpdateIfNoValuesChanged: true }));
  }
  await ds.destroy();
});
