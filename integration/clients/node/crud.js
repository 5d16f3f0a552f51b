// crud.js drives node-postgres through phiproxy's PHI path for the
// integration tests. It prints one line per result so the Go test can
// compare a run through the proxy (tables patients/visits) with a run direct
// on the plaintext twin (patients_plain/visits_plain).
//
//   node crud.js crud DSN SUFFIX BASE
//   node crud.js canary DSN ID SSN DIAGNOSIS DOB MRN
'use strict';
const { Client, types } = require('pg');

// Dates and int8 as PostgreSQL's text, so the output does not depend on
// the machine's time zone; a proxy that reported bytea would print a Buffer.
types.setTypeParser(1082, (v) => v);
types.setTypeParser(20, (v) => v);

// Long values print as their length and ends, to keep the output short.
const short = (s) => (s.length > 64 ? `${s.slice(0, 8)}…${s.slice(-8)}(${s.length})` : s);
const fmt = (v) => (v === null || v === undefined ? 'NULL' : short(Buffer.isBuffer(v) ? 'BYTEA:' + v.toString('hex') : String(v)));

function print(label, res) {
  console.log(`${label}: ${res.command} ${res.rowCount} fields=${res.fields.map((f) => f.name + ':' + f.dataTypeID).join(',')}`);
  for (const r of res.rows) {
    console.log('  ' + res.fields.map((f) => fmt(r[f.name])).join('|'));
  }
}

async function crud(c, suffix, base) {
  const P = 'patients' + suffix;
  const V = 'visits' + suffix;
  const cols = 'id, name, ssn, diagnosis, dob, mrn';
  const ins = `INSERT INTO ${P} (${cols}) VALUES ($1, $2, $3, $4, $5, $6)`;
  const ssn = (i) => `${base}-00-000${i}`;

  // Unnamed statement, parameters in text format.
  print('insert unnamed', await c.query(ins, [base + 1, 'node-1', ssn(1), 'flu', '1980-01-02', '4242']));
  // A named prepared statement, executed three times (parsed once).
  const named = { name: 'phi_ins', text: ins };
  print('insert named 1', await c.query({ ...named, values: [base + 2, 'node-2', ssn(2), 'asthma', '1990-12-31', 7] }));
  print('insert named 2', await c.query({ ...named, values: [base + 3, 'node-3', null, null, null, null] }));
  print('insert named 3', await c.query({ ...named, values: [base + 4, 'node-4', ssn(4), 'ünïcödé "q" \'x\'', '2000-02-29', '-9223372036854775808'] }));
  print('insert returning', await c.query(`INSERT INTO ${P} (${cols}) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ssn, dob, mrn`,
    [base + 5, 'node-5', ssn(5), 'x'.repeat(5000), new Date(Date.UTC(1970, 0, 1)).toISOString().slice(0, 10), 0]));
  print('insert visits', await c.query(`INSERT INTO ${V} (id, patient_ssn, visited_on) VALUES ($1, $2, $3), ($4, $5, $6)`,
    [base + 1, ssn(1), '2024-01-01', base + 2, ssn(2), '2024-01-02']));

  const range = { name: 'phi_range', text: `SELECT ${cols} FROM ${P} WHERE id BETWEEN $1 AND $2 ORDER BY id` };
  print('select range', await c.query({ ...range, values: [base, base + 99] }));
  print('lookup ssn named', await c.query({ name: 'phi_byssn', text: `SELECT id, diagnosis, dob FROM ${P} WHERE ssn = $1`, values: [ssn(2)] }));
  print('lookup ssn named again', await c.query({ name: 'phi_byssn', text: `SELECT id, diagnosis, dob FROM ${P} WHERE ssn = $1`, values: [ssn(1)] }));
  print('lookup mrn unnamed', await c.query(`SELECT id, name FROM ${P} WHERE mrn = $1 AND id BETWEEN $2 AND $3`, ['4242', base, base + 99]));
  print('lookup no match', await c.query(`SELECT id FROM ${P} WHERE ssn = $1`, ['nobody']));
  // No values: node-postgres uses the simple Query protocol.
  print('lookup literal simple', await c.query(`SELECT id, ssn, dob FROM ${P} WHERE ssn = '${ssn(4)}'`));
  print('join visits', await c.query(`SELECT p.id, v.patient_ssn, v.visited_on FROM ${P} p JOIN ${V} v ON v.patient_ssn = p.ssn WHERE p.id BETWEEN $1 AND $2 ORDER BY p.id`, [base, base + 99]));
  print('null check', await c.query(`SELECT count(*) FROM ${P} WHERE id BETWEEN $1 AND $2 AND ssn IS NULL`, [base, base + 99]));

  print('update', await c.query(`UPDATE ${P} SET diagnosis = $1, dob = $2 WHERE ssn = $3`, ['cured', '1980-01-03', ssn(1)]));
  print('update mrn', await c.query(`UPDATE ${P} SET mrn = $2 WHERE id = $1 RETURNING mrn, ssn`, [base + 2, '8']));
  print('delete', await c.query(`DELETE FROM ${P} WHERE ssn = $1 RETURNING id, ssn, diagnosis`, [ssn(4)]));
  print('select final', await c.query({ ...range, values: [base, base + 99] }));

  // Inside a transaction, rolled back.
  await c.query('BEGIN');
  print('tx insert', await c.query(ins, [base + 50, 'node-tx', ssn(50), 'tx', '2001-01-01', 50]));
  print('tx select', await c.query(`SELECT ssn FROM ${P} WHERE id = $1`, [base + 50]));
  await c.query('ROLLBACK');
  print('after rollback', await c.query(`SELECT count(*) FROM ${P} WHERE id = $1`, [base + 50]));
}

async function canary(c, id, ssn, diagnosis, dob, mrn) {
  await c.query('INSERT INTO patients (id, name, ssn, diagnosis, dob, mrn) VALUES ($1, $2, $3, $4, $5, $6)', [id, 'canary-node', ssn, diagnosis, dob, mrn]);
  await c.query({ name: 'canary_visit', text: 'INSERT INTO visits (id, patient_ssn) VALUES ($1, $2)', values: [id, ssn] });
  const r = await c.query('SELECT ssn, diagnosis, dob, mrn FROM patients WHERE id = $1', [id]);
  const v = await c.query('SELECT patient_ssn FROM visits WHERE patient_ssn = $1', [ssn]);
  console.log([r.rows[0].ssn, r.rows[0].diagnosis, r.rows[0].dob, r.rows[0].mrn, v.rows[0].patient_ssn].map(fmt).join('|'));
}

async function main() {
  const [mode, dsn, ...rest] = process.argv.slice(2);
  const c = new Client({ connectionString: dsn });
  await c.connect();
  try {
    if (mode === 'crud') {
      await crud(c, rest[0], Number(rest[1]));
    } else if (mode === 'canary') {
      await canary(c, Number(rest[0]), rest[1], rest[2], rest[3], rest[4]);
    } else {
      throw new Error('usage: crud.js crud|canary DSN ...');
    }
  } finally {
    await c.end();
  }
}

main().catch((e) => {
  console.error(`ERROR ${e.code || ''} ${e.message}`);
  process.exit(1);
});
