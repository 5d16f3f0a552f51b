-- bench/phi.sql's transaction, run directly on a copy of the encrypted table
-- (target "cipher" of bench/run.sh -workload phi; patients_ct has the same
-- rows, indexes and envelope CHECKs as patients): the same statements with
-- values shaped like phiproxy's envelopes (header 'PH' 0x01, then 32–36
-- bytes), so that PostgreSQL does the work it does behind phiproxy without
-- the proxy. A copy, because these values do not decrypt.
-- The lookup takes the ciphertext of an existing ssn from ssn_ct (id → the
-- row's ssn), as phiproxy's deterministic encryption of the literal would
-- give it; the md5 calls only make distinct bytes.
\set id random(1, :rows)
\set n random(1, :rows)
\set nssn random(200000000, 299999999)
\set dx random(1, 1000000)
SELECT ssn, diagnosis FROM patients_ct WHERE id = :id;
SELECT id, diagnosis FROM patients_ct WHERE ssn = (SELECT ct FROM ssn_ct WHERE n = :n);
INSERT INTO patients_ct (ssn, diagnosis) VALUES (decode('504801' || md5(:nssn::text) || md5(:nssn::text), 'hex'), decode('504801' || md5(:dx::text) || md5(:dx::text) || '00000000', 'hex'));
UPDATE patients_ct SET diagnosis = decode('504801' || md5(:dx::text) || md5(:dx::text) || '00000000', 'hex') WHERE id = :id;
