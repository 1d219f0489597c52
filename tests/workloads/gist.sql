-- A GiST workload: an index build and inserts with leaf, internal and root splits
-- (the split child's follow-right cleared by the parent's update), in-place updates of
-- parent keys, killed tuples removed at insert time (GIST_DELETE), VACUUM removing
-- tuples (page updates) and deleting empty leaf pages (PAGE_DELETE), then inserts that
-- reuse them (PAGE_REUSE).
DROP TABLE IF EXISTS gp, gb;
CREATE TABLE gp (id int, p point);
INSERT INTO gp SELECT g, point(g % 1000, g / 1000) FROM generate_series(1, 20000) g;
CREATE INDEX gp_p ON gp USING gist (p);
INSERT INTO gp SELECT g, point(random() * 2000, random() * 2000) FROM generate_series(1, 30000) g;
CREATE TABLE gb (id int, b box, r int4range);
CREATE INDEX gb_b ON gb USING gist (b);
CREATE INDEX gb_r ON gb USING gist (r);
INSERT INTO gb SELECT g, box(point(g, g), point(g + 10, g + 10)), int4range(g, g + 100)
  FROM generate_series(1, 20000) g;
-- Kill tuples through index scans, then insert into the same pages.
DELETE FROM gp WHERE id % 4 = 0;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) FROM gp WHERE p <@ box(point(0, 0), point(2000, 2000));
RESET enable_bitmapscan;
RESET enable_seqscan;
INSERT INTO gp SELECT g, point(random() * 2000, random() * 2000) FROM generate_series(1, 5000) g;
-- Empty whole leaf pages, vacuum them away, then reuse them.
DELETE FROM gb WHERE id BETWEEN 2000 AND 15000;
VACUUM gb;
VACUUM gb;
INSERT INTO gb SELECT g, box(point(g, 0), point(g + 1, 1)), int4range(g, g + 1)
  FROM generate_series(1, 20000) g;
DELETE FROM gp WHERE id % 3 = 0;
VACUUM gp;
