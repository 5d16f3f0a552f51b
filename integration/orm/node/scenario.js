// scenario.js holds what every Node stack of phiproxy's ORM suite shares:
// the arguments, the rows it writes, how it prints (one JSON object per
// line, compared by integration/orm_test.go between the run through
// phiproxy and the run on the plaintext twin) and how it checks a refusal.
'use strict';
const { types } = require('pg');

// date as PostgreSQL's text, whatever the machine's time zone.
types.setTypeParser(1082, (v) => v);

const [dsn, mode] = process.argv.slice(2);
if (!dsn || !['phi', 'plain'].includes(mode)) {
  console.error('usage: node STACK.js DSN phi|plain');
  process.exit(2);
}

const seed = [
  { name: 'Ada', ssn: '111-11-1111', diagnosis: 'flu', notes: 'first visit', dob: '1980-01-02' },
  { name: 'Bob', ssn: '222-22-2222', diagnosis: null, notes: 'ünïcödé "q" \'x\'', dob: '1975-06-30' },
  { name: 'Cy', ssn: '333-33-3333', diagnosis: 'asthma', notes: null, dob: null },
  { name: 'Di', ssn: '444-44-4444', diagnosis: 'flu', notes: '', dob: '2000-02-29' },
  { name: 'Ed', ssn: null, diagnosis: 'none', notes: 'no ssn', dob: '1999-12-31' },
];

const visits = [
  { patient_ssn: '111-11-1111', visited_on: '2024-01-05', reason: 'checkup' },
  { patient_ssn: '222-22-2222', visited_on: '2024-02-06', reason: null },
  { patient_ssn: '111-11-1111', visited_on: '2024-03-07', reason: 'follow-up' },
  { patient_ssn: '999-99-9999', visited_on: '2024-04-08', reason: 'walk-in' },
];

const cols = ['id', 'name', 'ssn', 'diagnosis', 'notes', 'dob', 'active'];

// row prints a patient (a model instance, an entity or a plain row) with
// its columns in one order.
function row(p) {
  const o = {};
  for (const c of cols) {
    const v = p[c];
    o[c] = v === undefined ? null : v instanceof Date ? v.toISOString().slice(0, 10) : v;
  }
  return o;
}

function put(key, value) {
  console.log(JSON.stringify({ [key]: value }));
}

// refused runs fn, which phiproxy must refuse, and prints the SQLSTATE
// (code on node-postgres errors, which the ORMs wrap in their own).
async function refused(name, fn) {
  let state = 'none';
  try {
    await fn();
  } catch (e) {
    state = e.code || (e.parent && e.parent.code) || (e.original && e.original.code) || (e.driverError && e.driverError.code) || String(e.message);
  }
  console.log(JSON.stringify({ refused: name, sqlstate: state }));
}

async function main(run) {
  try {
    await run();
  } catch (e) {
    console.error(e);
    process.exit(1);
  }
}

module.exports = { dsn, mode, phi: mode === 'phi', seed, visits, cols, row, put, refused, main };
