-- An SP-GiST workload: indexes created empty (so that every tuple is WAL-logged) with
-- quad_point_ops, kd_point_ops, text_ops (long common prefixes), range_ops and inet_ops,
-- plus NULLs (the nulls tree).  Inserts add leaf tuples (ADD_LEAF, incl. chain heads and
-- parent downlinks), move leaf chains to other pages (MOVE_LEAFS), split the root leaf
-- and later leaves (PICKSPLIT, root leaf -> inner and inner page/parent variants), grow
-- inner tuples in place and onto other pages (ADD_NODE) and break text prefixes
-- (SPLIT_TUPLE).  Deletes then VACUUM: leaf pages (VACUUM_LEAF: dead, placeholders,
-- moves, chains), a root that is still a leaf page (VACUUM_ROOT), and redirects left by
-- the moves turned into placeholders and trailing placeholders removed
-- (VACUUM_REDIRECT).  Inserts after that reuse placeholders and DEAD tuples.
DROP TABLE IF EXISTS sp_pt, sp_txt, sp_rng, sp_inet, sp_small, sp_dead;
CREATE TABLE sp_pt (id int, p point);
CREATE INDEX sp_pt_quad ON sp_pt USING spgist (p);
CREATE INDEX sp_pt_kd ON sp_pt USING spgist (p kd_point_ops);
INSERT INTO sp_pt SELECT g, point(g % 300, g / 300) FROM generate_series(1, 15000) g;
INSERT INTO sp_pt SELECT g, point(random() * 500, random() * 500)
  FROM generate_series(15001, 30000) g;
INSERT INTO sp_pt SELECT g, NULL FROM generate_series(30001, 31000) g;
-- Many equal points: all-the-same inner tuples, long chains.
INSERT INTO sp_pt SELECT g, point(7, 7) FROM generate_series(31001, 33000) g;

CREATE TABLE sp_txt (id int, t text);
CREATE INDEX sp_txt_t ON sp_txt USING spgist (t);
INSERT INTO sp_txt SELECT g, 'a-long-common-prefix-shared-by-many-values/' || g
  FROM generate_series(1, 6000) g;
-- Break the prefix at various depths (SPLIT_TUPLE), and new labels (ADD_NODE).
INSERT INTO sp_txt SELECT g, substr('a-long-common-prefix-shared-by-many-values/', 1, g % 40)
  || chr(33 + g % 90) || g FROM generate_series(6001, 12000) g;
INSERT INTO sp_txt SELECT g, chr(40 + g % 80) || repeat(chr(40 + g % 77), g % 30) || g
  FROM generate_series(12001, 20000) g;
INSERT INTO sp_txt SELECT g, md5(g::text) FROM generate_series(20001, 30000) g;
INSERT INTO sp_txt SELECT g, NULL FROM generate_series(30001, 30500) g;
-- Values longer than a page: pick-splits of a fresh leaf page (initSrc) peel prefixes.
INSERT INTO sp_txt SELECT g, repeat(md5(g::text), 300) FROM generate_series(30501, 30520) g;

CREATE TABLE sp_rng (id int, r int4range);
CREATE INDEX sp_rng_r ON sp_rng USING spgist (r);
INSERT INTO sp_rng SELECT g, int4range(g % 1000, g % 1000 + g % 37 + 1)
  FROM generate_series(1, 15000) g;

CREATE TABLE sp_inet (id int, a inet);
CREATE INDEX sp_inet_a ON sp_inet USING spgist (a);
INSERT INTO sp_inet SELECT g, ('10.' || (g / 256 % 256) || '.' || (g % 256) || '.0/'
  || (16 + g % 17))::inet FROM generate_series(1, 10000) g;
INSERT INTO sp_inet SELECT g, ('2001:db8::' || to_hex(g) || '/' || (64 + g % 64))::inet
  FROM generate_series(10001, 15000) g;

-- A small index whose root stays a leaf page.
CREATE TABLE sp_small (id int, p point);
CREATE INDEX sp_small_p ON sp_small USING spgist (p);
INSERT INTO sp_small SELECT g, point(g, g) FROM generate_series(1, 50) g;

-- Deletes, then VACUUM: leaf pages, the leaf root, redirects and placeholders.
DELETE FROM sp_pt WHERE id % 3 = 0 OR id BETWEEN 20000 AND 26000
  OR (id <= 15000 AND id % 300 BETWEEN 100 AND 160);
DELETE FROM sp_txt WHERE id % 4 = 0 OR id BETWEEN 14000 AND 18000;
DELETE FROM sp_rng WHERE id % 5 < 2;
DELETE FROM sp_inet WHERE id % 2 = 0;
DELETE FROM sp_small WHERE id % 2 = 0;
VACUUM sp_pt, sp_txt, sp_rng, sp_inet, sp_small;
VACUUM sp_pt, sp_txt, sp_rng, sp_inet, sp_small;
-- Inserts into vacuumed pages (placeholders and DEAD tuples reused: the deleted grid
-- region and text values come back), then a last round.
INSERT INTO sp_pt SELECT g, point(g % 300, g / 300) FROM generate_series(1, 15000) g
  WHERE g % 300 BETWEEN 100 AND 160;
INSERT INTO sp_txt SELECT g, chr(40 + g % 80) || repeat(chr(40 + g % 77), g % 30) || g
  FROM generate_series(14000, 18000) g;
INSERT INTO sp_pt SELECT g, point(random() * 500, random() * 500)
  FROM generate_series(40001, 46000) g;
INSERT INTO sp_txt SELECT g, 'a-long-common-prefix-shared-by-many-values/' || g
  FROM generate_series(40001, 43000) g;
INSERT INTO sp_small SELECT g, point(g, -g) FROM generate_series(51, 60) g;
-- Dead chains scattered among live ones: text groups (two letters, then a number; one
-- chain per group) deleted whole and vacuumed (DEAD heads), then the live groups grow
-- while the dead ones come back: some DEAD heads are on full pages, and their chains
-- move with the head replaced (MOVE_LEAFS replaceDead).
CREATE TABLE sp_dead (a int, b int, n int, t text);
CREATE INDEX sp_dead_t ON sp_dead USING spgist (t);
INSERT INTO sp_dead SELECT a, b, n, chr(65 + a) || chr(65 + b) || '-' || n
  FROM generate_series(0, 25) a, generate_series(0, 25) b, generate_series(1, 10) n;
DELETE FROM sp_dead WHERE (a + b) % 3 = 0;
VACUUM sp_dead;
INSERT INTO sp_dead SELECT a, b, n, chr(65 + a) || chr(65 + b) || '-' || n
  FROM generate_series(0, 25) a, generate_series(0, 25) b, generate_series(1, 40) n
  WHERE (a + b) % 3 <> 0 AND n > 10 OR (a + b) % 3 = 0 AND n <= 10
  ORDER BY hashint4(a * 10000 + b * 100 + n);
DELETE FROM sp_pt WHERE id % 7 = 0;
DELETE FROM sp_txt WHERE id % 7 = 0;
DELETE FROM sp_small WHERE id > 50;
VACUUM sp_pt, sp_txt, sp_small;
