-- A hash index workload producing every Hash record type: index builds (INIT_META_PAGE,
-- INIT_BITMAP_PAGE, INSERT), inserts of distinct keys that split buckets
-- (SPLIT_ALLOCATE_PAGE, SPLIT_COMPLETE), duplicate-heavy keys giving long overflow
-- chains (ADD_OVFL_PAGE) and splits of such chains (SPLIT_PAGE: the new bucket's full
-- pages, logged as images), killed tuples removed at insert time (VACUUM_ONE_PAGE:
-- rows deleted, marked LP_DEAD by an index scan, then inserts into the same full
-- bucket), and deletes + VACUUM (DELETE, MOVE_PAGE_CONTENTS and SQUEEZE_PAGE while
-- squeezing the chains, SPLIT_CLEANUP of split buckets, UPDATE_META_PAGE), then inserts
-- that reuse the freed overflow pages (ADD_OVFL_PAGE setting a bitmap bit).
DROP TABLE IF EXISTS hx, hd;
CREATE TABLE hx (id int, k int) WITH (autovacuum_enabled = off);
INSERT INTO hx SELECT g, g FROM generate_series(1, 2000) g;
CREATE INDEX hx_k ON hx USING hash (k);
-- Distinct keys: many bucket splits.
INSERT INTO hx SELECT g, g FROM generate_series(2001, 40000) g;
-- Duplicates: each key's bucket is a long chain of overflow pages, split as it grows.
CREATE TABLE hd (id int, k int) WITH (autovacuum_enabled = off);
CREATE INDEX hd_k ON hd USING hash (k);
INSERT INTO hd SELECT g, g % 7 FROM generate_series(1, 30000) g;
INSERT INTO hd SELECT g, g % 23 FROM generate_series(30001, 45000) g;
-- Kill tuples through an index scan, then insert into the same bucket pages.
DELETE FROM hd WHERE k IN (1, 2) AND id % 3 <> 0;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) FROM hd WHERE k = 1;
SELECT count(*) FROM hd WHERE k = 2;
RESET enable_bitmapscan;
RESET enable_seqscan;
INSERT INTO hd SELECT g, 1 FROM generate_series(45001, 46000) g;
INSERT INTO hd SELECT g, 2 FROM generate_series(46001, 47000) g;
-- Deletes + VACUUM: holes in chains (tuples moved to earlier pages), whole chains
-- emptied (overflow pages freed), split buckets cleaned up.
DELETE FROM hd WHERE k IN (3, 4) AND id % 5 <> 0;
DELETE FROM hd WHERE k = 5;
DELETE FROM hx WHERE id % 3 = 0;
VACUUM hd;
VACUUM hx;
-- Reuse the freed overflow pages.
INSERT INTO hd SELECT g, 5 FROM generate_series(47001, 52000) g;
