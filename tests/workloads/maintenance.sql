-- A maintenance workload for WAL decoding and redo tests: one statement of each kind
-- that writes unusual WAL.  Run by tests.workloads.run_maintenance with
--   psql -X -v ON_ERROR_STOP=1 -f maintenance.sql   (not -1: CREATE DATABASE must be top level)
-- against database postgres.  It starts by dropping what an earlier run left, so it can
-- run twice on one cluster.  What it leaves behind (checked by tests/integration/
-- test_workloads.py, keep them in step):
--   ws_accounts      4000 rows (ids 1..4000), every balance = 10 * id + 20 after the updates
--   ws_events        1000 rows (ids 1..1000 after deleting 1001..3000 and vacuum)
--   ws_toast         38 rows: 19 compressible ('abc' x 3000), 19 incompressible (> 6 KB)
--   ws_subxact       53 rows: 'kept-1', 'kept-3', 'released' and 50 'loop-<odd>' rows
--   ws_prepared      ids 1 and 3 (2 was ROLLBACK PREPARED)
--   ws_multixact     1 row, balance 2
--   ws_seq           last_value 5000 (setval after 1000 nextval calls)
--   ws_unlogged      100 rows (an unlogged table: its init fork is WAL-logged)
--   databases ws_db_wal_log (STRATEGY wal_log, holds ws_in_db with 500 rows) and
--   ws_db_file_copy (STRATEGY file_copy from ws_db_wal_log, so also 500 rows);
--   ws_db_dropped is created and dropped.

-- ------------------------------------------------------------------ clean slate
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ws_db_file_copy;
DROP DATABASE IF EXISTS ws_db_wal_log;
DROP DATABASE IF EXISTS ws_db_dropped;
DROP TABLE IF EXISTS ws_accounts, ws_events, ws_toast, ws_subxact, ws_prepared,
    ws_multixact, ws_unlogged, ws_scratch;
DROP SEQUENCE IF EXISTS ws_seq;
DROP FUNCTION IF EXISTS ws_exception_loop(integer);

-- ------------------------------------------------------------------ tables and btree indexes
CREATE TABLE ws_accounts (id integer PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE INDEX ws_accounts_balance ON ws_accounts (balance);
INSERT INTO ws_accounts SELECT g, 0, 'note ' || g FROM generate_series(1, 4000) g;

CREATE TABLE ws_scratch (id integer, payload text);
INSERT INTO ws_scratch SELECT g, repeat('s', 100) FROM generate_series(1, 2000) g;
CREATE INDEX ws_scratch_id ON ws_scratch (id);
CREATE UNIQUE INDEX ws_scratch_id_payload ON ws_scratch (id, payload);
DROP INDEX ws_scratch_id_payload;
TRUNCATE ws_scratch;
INSERT INTO ws_scratch SELECT g, 'after truncate' FROM generate_series(1, 100) g;
DROP TABLE ws_scratch;

CREATE UNLOGGED TABLE ws_unlogged (id integer PRIMARY KEY, v text);
INSERT INTO ws_unlogged SELECT g, 'u' || g FROM generate_series(1, 100) g;

-- ------------------------------------------------------------------ update-heavy
-- note is not indexed: HOT updates; balance is indexed: non-HOT updates
UPDATE ws_accounts SET note = 'hot ' || id;
UPDATE ws_accounts SET balance = balance + 10 * id;
UPDATE ws_accounts SET balance = balance + 10 WHERE id % 2 = 0;
UPDATE ws_accounts SET balance = balance + 10 WHERE id % 2 = 1;
UPDATE ws_accounts SET balance = balance + 10, note = NULL;
VACUUM ws_accounts;

-- ------------------------------------------------------------------ delete + vacuum
CREATE TABLE ws_events (id integer PRIMARY KEY, kind text, body text);
INSERT INTO ws_events SELECT g, 'k' || (g % 7), repeat(md5(g::text), 4)
    FROM generate_series(1, 3000) g;
DELETE FROM ws_events WHERE id > 2000;          -- the tail: VACUUM truncates the heap
DELETE FROM ws_events WHERE id BETWEEN 1001 AND 2000;
VACUUM ws_events;
VACUUM (FREEZE) ws_events;
VACUUM FULL ws_events;
VACUUM FULL ws_accounts;

-- ------------------------------------------------------------------ sequences
CREATE SEQUENCE ws_seq;
SELECT count(nextval('ws_seq')) FROM generate_series(1, 1000);
SELECT setval('ws_seq', 5000);

-- ------------------------------------------------------------------ TOAST
CREATE TABLE ws_toast (id integer PRIMARY KEY, kind text, body text);
-- compressible: pglz squeezes 9000 bytes well below the TOAST threshold
INSERT INTO ws_toast SELECT g, 'compressible', repeat('abc', 3000)
    FROM generate_series(1, 20) g;
-- incompressible: concatenated md5 hex of random strings, stored out of line as is
INSERT INTO ws_toast
    SELECT g, 'incompressible',
           (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 200) i)
    FROM generate_series(21, 40) g;
UPDATE ws_toast SET body = body || md5(random()::text) WHERE id % 5 = 0;
DELETE FROM ws_toast WHERE id IN (1, 21);
VACUUM ws_toast;

-- ------------------------------------------------------------------ subtransactions
CREATE TABLE ws_subxact (id serial PRIMARY KEY, v text);
BEGIN;
INSERT INTO ws_subxact (v) VALUES ('kept-1');
SAVEPOINT a;
INSERT INTO ws_subxact (v) VALUES ('rolled-back-2');
ROLLBACK TO SAVEPOINT a;
INSERT INTO ws_subxact (v) VALUES ('kept-3');
SAVEPOINT b;
INSERT INTO ws_subxact (v) VALUES ('released');
RELEASE SAVEPOINT b;
COMMIT;

CREATE FUNCTION ws_exception_loop(n integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    ok integer := 0;
BEGIN
    FOR i IN 1..n LOOP
        BEGIN
            INSERT INTO ws_subxact (v) VALUES ('loop-' || i);
            IF i % 2 = 0 THEN
                RAISE EXCEPTION 'undo %', i;
            END IF;
            ok := ok + 1;
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    END LOOP;
    RETURN ok;
END
$$;
-- 100 subtransactions in one transaction: more than PGPROC_MAX_CACHED_SUBXIDS (64),
-- so the xact assignment record appears too
SELECT ws_exception_loop(100);

-- ------------------------------------------------------------------ multixact
CREATE TABLE ws_multixact (id integer PRIMARY KEY, balance integer);
INSERT INTO ws_multixact VALUES (1, 1);
BEGIN;
SELECT * FROM ws_multixact WHERE id = 1 FOR SHARE;
SAVEPOINT s;
UPDATE ws_multixact SET balance = 2 WHERE id = 1;   -- locker + updater: a MultiXact
RELEASE SAVEPOINT s;
COMMIT;

-- ------------------------------------------------------------------ two-phase commit
CREATE TABLE ws_prepared (id integer PRIMARY KEY, v text);
BEGIN;
INSERT INTO ws_prepared VALUES (1, 'commit prepared');
PREPARE TRANSACTION 'ws_commit';
COMMIT PREPARED 'ws_commit';
BEGIN;
INSERT INTO ws_prepared VALUES (2, 'rollback prepared');
PREPARE TRANSACTION 'ws_rollback';
ROLLBACK PREPARED 'ws_rollback';
-- a prepared transaction with a subtransaction, kept across a checkpoint
BEGIN;
INSERT INTO ws_prepared VALUES (3, 'prepared across a checkpoint');
SAVEPOINT p;
INSERT INTO ws_prepared VALUES (4, 'rolled back inside');
ROLLBACK TO SAVEPOINT p;
PREPARE TRANSACTION 'ws_across_checkpoint';
CHECKPOINT;
COMMIT PREPARED 'ws_across_checkpoint';

-- ------------------------------------------------------------------ databases
CREATE DATABASE ws_db_wal_log STRATEGY = wal_log;
\connect ws_db_wal_log
CREATE TABLE ws_in_db (id integer PRIMARY KEY, v text);
INSERT INTO ws_in_db SELECT g, 'in db ' || g FROM generate_series(1, 500) g;
\connect postgres
CREATE DATABASE ws_db_file_copy TEMPLATE ws_db_wal_log STRATEGY = file_copy;
CREATE DATABASE ws_db_dropped STRATEGY = wal_log;
DROP DATABASE ws_db_dropped;

-- ------------------------------------------------------------------ the end
CHECKPOINT;
