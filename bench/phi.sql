-- The PHI workload (bench/run.sh -workload phi): one transaction is a point
-- select by id returning both PHI columns, a lookup by the deterministic
-- column, an insert and an update. It runs unchanged on the plaintext twin
-- (ssn text, diagnosis text) and on the encrypted table (both bytea behind
-- phiproxy: ssn deterministic, diagnosis randomized). ssn values are the
-- decimal text of a number, so pgbench's integer variables can carry them;
-- the ::text casts make the simple protocol's inlined values text too.
\set id random(1, :rows)
\set ssn 100000000 + random(1, :rows)
\set nssn random(200000000, 299999999)
\set dx random(1, 1000000)
SELECT ssn, diagnosis FROM patients WHERE id = :id;
SELECT id, diagnosis FROM patients WHERE ssn = :ssn::text;
INSERT INTO patients (ssn, diagnosis) VALUES (:nssn::text, :dx::text);
UPDATE patients SET diagnosis = :dx::text WHERE id = :id;
