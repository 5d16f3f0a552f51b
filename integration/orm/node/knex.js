// knex 3 as its users write it, for phiproxy's ORM suite: migrate.latest
// and columnInfo at startup, multi-row insert … returning, whereIn lists,
// a join on the shared-key column, transactions with a nested one (a
// savepoint), onConflict().merge()/ignore() upserts, stream() (a portal
// read in batches, pg-query-stream), and the refusals.
//
//   node knex.js DSN phi|plain
'use strict';
const knex = require('knex');
const s = require('./scenario');

// A migration as knex users write them: a new table, and an index on a
// plain column of a PHI table.
const migrations = {
  getMigrations: async () => ['20240101_doctors'],
  getMigrationName: (m) => m,
  getMigration: async () => ({
    up: async (k) => {
      await k.schema.createTable('doctors', (t) => {
        t.increments('id');
        t.text('name').notNullable();
      });
      await k.schema.alterTable('visits', (t) => t.index(['visited_on']));
    },
    down: async (k) => k.schema.dropTable('doctors'),
  }),
};

s.main(async () => {
  const db = knex({ client: 'pg', connection: s.dsn, pool: { min: 0, max: 2 } });

  await db.migrate.latest({ migrationSource: migrations });
  s.put('migrated', await db.migrate.currentVersion({ migrationSource: migrations }));
  s.put('hasTable', await db.schema.hasTable('patients'));
  const info = await db('patients').columnInfo();
  s.put('columnInfo', Object.entries(info).map(([k, v]) => [k, v.type, v.nullable, v.maxLength]));
  s.put('hasColumn', await db.schema.hasColumn('patients', 'ssn'));

  s.put('insert', (await db('patients').insert(s.seed).returning('*')).map(s.row));
  await db('visits').insert(s.visits);
  s.put('insert one', (await db('patients').insert({ name: 'Gus', ssn: '777-77-7777', diagnosis: 'gout', dob: '1966-03-04' }).returning(['id', 'ssn'])));

  s.put('first', s.row(await db('patients').where('ssn', '222-22-2222').first()));
  s.put('first object', s.row(await db('patients').where({ ssn: '333-33-3333' }).first()));
  s.put('whereIn', (await db('patients').whereIn('ssn', ['111-11-1111', '444-44-4444', '000-00-0000']).orderBy('id')).map(s.row));
  s.put('whereNull', (await db('patients').whereNull('diagnosis').orWhereNull('dob').orderBy('id').pluck('id')));
  s.put('whereNot', await db('patients').whereNot('ssn', '111-11-1111').count('* as n').first());
  const joined = await db('visits as v').join('patients as p', 'p.ssn', 'v.patient_ssn')
    .select('v.id', 'p.name', 'p.ssn', 'v.visited_on', 'v.reason').orderBy('v.id');
  s.put('join', joined.map((r) => [r.id, r.name, r.ssn, r.visited_on, r.reason]));
  s.put('whereExists', await db('patients as p').whereExists(db('visits as v').whereRaw('v.patient_ssn = p.ssn')).orderBy('p.id').pluck('p.name'));
  s.put('groupBy', await db('visits').select('patient_ssn').count('* as n').min('id as first').groupBy('patient_ssn').orderBy([{ column: 'n', order: 'desc' }, 'first']));

  // A transaction with a nested one (SAVEPOINT) rolled back.
  await db.transaction(async (trx) => {
    await trx('patients').where('ssn', '111-11-1111').update({ diagnosis: 'bronchitis' });
    try {
      await trx.transaction(async (t2) => {
        await t2('patients').where('ssn', '111-11-1111').update({ notes: 'rolled back' });
        await t2('patients').insert({ name: 'Dup', ssn: '222-22-2222' });
      });
    } catch (e) {
      s.put('duplicate ssn', e.code);
    }
    await trx('patients').where('ssn', '222-22-2222').forUpdate().first();
    await trx('patients').whereIn('ssn', ['222-22-2222']).update({ diagnosis: 'cold', dob: '1975-07-01' });
  });
  s.put('after transaction', (await db('patients').whereIn('ssn', ['111-11-1111', '222-22-2222']).orderBy('id')).map(s.row));

  // Upserts.
  const merged = await db('patients').insert([
    { name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia', notes: 'upserted', dob: '1980-01-02' },
    { name: 'Fay', ssn: '666-66-6666', diagnosis: 'migraine', notes: 'new', dob: '1990-09-09' },
  ]).onConflict('ssn').merge(['diagnosis', 'notes']).returning('*');
  s.put('merge', merged.map(s.row));
  s.put('merge all', (await db('patients').insert({ name: 'Di', ssn: '444-44-4444', diagnosis: 'cold', notes: 'updated', dob: '2000-02-29' })
    .onConflict('ssn').merge().returning(['id', 'diagnosis'])));
  s.put('ignore', await db('patients').insert({ name: 'Dup', ssn: '333-33-3333' }).onConflict('ssn').ignore().returning('id'));
  s.put('updated', await db('patients').where({ ssn: '333-33-3333' }).update({ diagnosis: 'asthma, mild', active: false }));
  s.put('deleted visits', await db('visits').where('patient_ssn', '999-99-9999').del());

  // Streaming.
  const streamed = [];
  for await (const r of db('patients').where('active', true).orderBy('id').stream({ batchSize: 2 })) {
    streamed.push(s.row(r));
  }
  s.put('stream', streamed);

  if (s.phi) {
    await s.refused("knex orderBy('ssn')", () => db('patients').orderBy('ssn'));
    await s.refused("knex where('dob', '>', …)", () => db('patients').where('dob', '>', '1980-01-01'));
    await s.refused("knex whereLike('ssn', …)", () => db('patients').whereLike('ssn', '111%'));
    await s.refused("knex whereBetween('dob', …)", () => db('patients').whereBetween('dob', ['1980-01-01', '1990-01-01']));
  }
  await db.destroy();
});
