-- A btree-heavy workload: random-key inserts with many leaf and internal splits,
-- deletes + VACUUM (index tuple deletion and page deletion), duplicate-heavy inserts
-- that trigger deduplication and posting-list splits, simple deletion of killed items,
-- a REINDEX and an index build.
DROP TABLE IF EXISTS bt, dup, killed;
CREATE TABLE bt (k text, v int);
CREATE INDEX bt_k ON bt (k);
CREATE INDEX bt_v ON bt (v);
INSERT INTO bt SELECT md5(random()::text) || md5(g::text), g FROM generate_series(1, 30000) g;
CREATE TABLE dup (k int, pad text);
CREATE INDEX dup_k ON dup (k);
INSERT INTO dup SELECT g % 7, 'x' FROM generate_series(1, 25000) g;
INSERT INTO dup SELECT 3, 'y' FROM generate_series(1, 5000) g;
DELETE FROM bt WHERE v % 3 = 0;
VACUUM bt;
DELETE FROM bt WHERE v BETWEEN 3000 AND 25000;
VACUUM bt;
VACUUM bt;
CREATE TABLE killed (id int PRIMARY KEY, v int);
INSERT INTO killed SELECT g, g FROM generate_series(1, 20000) g;
UPDATE killed SET v = v + 1 WHERE id % 2 = 0;
SET enable_seqscan = off;
SELECT count(*) FROM killed WHERE id > 0;
RESET enable_seqscan;
INSERT INTO killed SELECT g, g FROM generate_series(20001, 30000) g;
DELETE FROM dup WHERE k = 3 AND pad = 'y';
VACUUM dup;
REINDEX INDEX bt_k;
CREATE INDEX bt_k_v ON bt (k, v);
INSERT INTO bt SELECT md5(random()::text), g FROM generate_series(1, 10000) g;
CHECKPOINT;
