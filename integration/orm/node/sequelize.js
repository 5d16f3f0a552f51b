// Sequelize 6 as its users write it, for phiproxy's ORM suite: sync() and
// describeTable at startup, bulkCreate, Op.in lists, include over an
// association keyed by the shared-key column, findOrCreate, managed
// transactions with a nested one (a savepoint), upsert and bulkCreate
// with updateOnDuplicate, findAll pages, and the refusals.
//
//   node sequelize.js DSN phi|plain
'use strict';
const { Sequelize, DataTypes, Op } = require('sequelize');
const s = require('./scenario');

s.main(async () => {
  const queries = []; // what Sequelize logs, to see the statements it sent
  const sequelize = new Sequelize(s.dsn, { dialect: 'postgres', logging: (q) => queries.push(q) });
  const Patient = sequelize.define('Patient', {
    id: { type: DataTypes.INTEGER, primaryKey: true, autoIncrement: true },
    name: { type: DataTypes.TEXT, allowNull: false },
    ssn: { type: DataTypes.TEXT, unique: true },
    diagnosis: DataTypes.TEXT,
    notes: DataTypes.TEXT,
    dob: DataTypes.DATEONLY,
    active: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
  }, { tableName: 'patients', timestamps: false });
  const Visit = sequelize.define('Visit', {
    id: { type: DataTypes.INTEGER, primaryKey: true, autoIncrement: true },
    patient_ssn: { type: DataTypes.TEXT, allowNull: false },
    visited_on: { type: DataTypes.DATEONLY, allowNull: false },
    reason: DataTypes.TEXT,
  }, { tableName: 'visits', timestamps: false });
  Patient.hasMany(Visit, { foreignKey: 'patient_ssn', sourceKey: 'ssn', constraints: false });
  Visit.belongsTo(Patient, { foreignKey: 'patient_ssn', targetKey: 'ssn', constraints: false });

  // Startup: sync() (CREATE TABLE IF NOT EXISTS, then the indexes) and
  // describeTable.
  await sequelize.sync();
  const desc = await sequelize.getQueryInterface().describeTable('patients');
  s.put('columns', Object.entries(desc).map(([k, v]) => [k, v.type, v.allowNull]));

  const created = await Patient.bulkCreate(s.seed, { returning: true });
  s.put('created', created.map(s.row));
  await Visit.bulkCreate(s.visits);
  const gus = await Patient.create({ name: 'Gus', ssn: '777-77-7777', diagnosis: 'gout', dob: '1966-03-04' });
  s.put('create', s.row(gus));

  s.put('findOne', s.row(await Patient.findOne({ where: { ssn: '222-22-2222' } })));
  s.put('findOne unknown', await Patient.findOne({ where: { ssn: '000-00-0000' } }));
  s.put('in', (await Patient.findAll({ where: { ssn: ['111-11-1111', '444-44-4444', '000-00-0000'] }, order: [['id', 'ASC']] })).map(s.row));
  s.put('Op.in', (await Patient.findAll({ where: { ssn: { [Op.in]: ['333-33-3333'] } } })).map(s.row));
  s.put('nulls', (await Patient.findAll({ attributes: ['id'], where: { [Op.or]: [{ diagnosis: null }, { dob: null }] }, order: [['id', 'ASC']] })).map((p) => p.id));
  s.put('count', await Patient.count({ where: { ssn: { [Op.ne]: '111-11-1111' } } }));
  const vs = await Visit.findAll({ include: [{ model: Patient, required: true }], order: [['id', 'ASC']] });
  s.put('include', vs.map((v) => [v.id, v.Patient.name, v.Patient.ssn, v.visited_on, v.reason]));
  const ada = await Patient.findOne({ where: { ssn: '111-11-1111' }, include: [Visit], order: [[Visit, 'id', 'ASC']] });
  s.put('hasMany', ada.Visits.map((v) => [v.id, v.visited_on, v.reason]));

  const [found, made] = await Patient.findOrCreate({ where: { ssn: '333-33-3333' }, defaults: { name: 'Dup' } });
  s.put('findOrCreate found', [s.row(found), made]);
  queries.length = 0;
  const [ivy, madeIvy] = await Patient.findOrCreate({ where: { ssn: '123-45-6789' }, defaults: { name: 'Ivy', diagnosis: 'sprain', dob: '2001-01-01' } });
  s.put('findOrCreate created', [s.row(ivy), madeIvy]);
  s.put('findOrCreate sent pg_temp.testfunc', queries.some((q) => q.includes('CREATE OR REPLACE FUNCTION pg_temp.testfunc')));

  // A managed transaction with a nested one (SAVEPOINT) that fails.
  await sequelize.transaction(async (t) => {
    await Patient.update({ diagnosis: 'bronchitis' }, { where: { ssn: '111-11-1111' }, transaction: t });
    try {
      await sequelize.transaction({ transaction: t }, async (t2) => {
        await Patient.update({ notes: 'rolled back' }, { where: { ssn: '111-11-1111' }, transaction: t2 });
        await Patient.create({ name: 'Dup', ssn: '222-22-2222' }, { transaction: t2 });
      });
    } catch (e) {
      s.put('duplicate ssn', e.parent.code);
    }
    const bob = await Patient.findOne({ where: { ssn: '222-22-2222' }, transaction: t, lock: t.LOCK.UPDATE });
    bob.diagnosis = 'cold';
    bob.dob = '1975-07-01';
    await bob.save({ transaction: t });
  });
  s.put('after transaction', (await Patient.findAll({ where: { ssn: ['111-11-1111', '222-22-2222'] }, order: [['id', 'ASC']] })).map(s.row));

  // Upserts.
  const [up] = await Patient.upsert({ name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia', notes: 'upserted', dob: '1980-01-02' }, { conflictFields: ['ssn'], returning: true });
  s.put('upsert', s.row(up));
  const bulk = await Patient.bulkCreate([
    { name: 'Fay', ssn: '666-66-6666', diagnosis: 'migraine', notes: 'new', dob: '1990-09-09' },
    { name: 'Di', ssn: '444-44-4444', diagnosis: 'cold', notes: 'updated' },
  ], { updateOnDuplicate: ['diagnosis', 'notes'], conflictAttributes: ['ssn'], returning: true });
  s.put('updateOnDuplicate', bulk.map((p) => [p.ssn, p.diagnosis, p.notes]));
  const cy = await Patient.findOne({ where: { ssn: '333-33-3333' } });
  await cy.update({ diagnosis: 'asthma, mild', active: false });
  const [n] = await Patient.update({ notes: 'bulk' }, { where: { ssn: ['777-77-7777', '123-45-6789'] } });
  s.put('updated', n);
  s.put('destroyed visits', await Visit.destroy({ where: { patient_ssn: '999-99-9999' } }));

  // Iteration: findAll pages by primary key.
  const pages = [];
  for (let offset = 0; ; offset += 3) {
    const page = await Patient.findAll({ where: { active: true }, order: [['id', 'ASC']], limit: 3, offset });
    if (page.length === 0) break;
    pages.push(page.map(s.row));
  }
  s.put('pages', pages);

  if (s.phi) {
    await s.refused("sequelize order: [['ssn', 'ASC']]", () => Patient.findAll({ order: [['ssn', 'ASC']] }));
    await s.refused('sequelize dob: { [Op.gt] }', () => Patient.findAll({ where: { dob: { [Op.gt]: '1980-01-01' } } }));
    await s.refused('sequelize ssn: { [Op.like] }', () => Patient.findAll({ where: { ssn: { [Op.like]: '111%' } } }));
  }
  await sequelize.close();
});
