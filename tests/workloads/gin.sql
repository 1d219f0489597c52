-- A GIN workload producing every GIN record type:
-- - index builds (array, tsvector and jsonb_path_ops opclasses; logged as full-page
--   images) with posting trees for the frequent keys;
-- - fastupdate = off inserts: entry-tree leaf INSERTs (new keys, and posting lists
--   replaced: isDelete), posting-tree leaf INSERTs (compressed segments: ADDITEMS at the
--   end, then into the middle of the trees once VACUUM has freed heap space, which
--   re-splits segments: REPLACE / INSERT actions), data and entry leaf SPLITs, and the
--   downlink INSERTs into internal pages that finish them (the child's incomplete-split
--   flag cleared); long keys so entry-tree internal pages split too (SPLIT with a child,
--   and root splits);
-- - fastupdate = on inserts into the pending list (UPDATE_META_PAGE appending to the tail
--   page or linking a new sublist, INSERT_LISTPAGE, rows with many keys filling several
--   list pages), its cleanup by gin_clean_pending_list, the pending-list limit and VACUUM
--   (entry and posting-tree INSERTs, CREATE_PTREE for keys that outgrow an inline posting
--   list, DELETE_LISTPAGE);
-- - deletes then VACUUM: VACUUM_PAGE (entry leaves), VACUUM_DATA_LEAF_PAGE (posting-tree
--   leaves, segments removed: DELETE actions), DELETE_PAGE (emptied posting-tree leaves)
--   and the statistics UPDATE_META_PAGE at its end.
-- The bulk heap loads run with wal_consistency_checking off (their heap records would
-- only add gigabytes of check images); everything touching the GIN indexes runs with it.
DROP TABLE IF EXISTS ga, gk, gf, gp, gj;
SELECT setseed(0.25);

-- Posting trees for keys 0 and 1 (every other row each), mid-size inline posting lists
-- for keys 1000..1079, one unique key per row.
CREATE TABLE ga (id int, a int[]) WITH (autovacuum_enabled = off);
SET wal_consistency_checking = '';
INSERT INTO ga SELECT g, ARRAY[g % 2, 1000 + g % 80, 100000 + g] FROM generate_series(1, 60000) g;
RESET wal_consistency_checking;
CREATE INDEX ga_a ON ga USING gin (a) WITH (fastupdate = off);
-- Appends: ADDITEMS on the rightmost posting-tree leaves, entry-leaf replacements and
-- new keys.
INSERT INTO ga SELECT g, ARRAY[g % 2, 1000 + g % 80, 100000 + g] FROM generate_series(60001, 61500) g;
-- Empty the middle of the posting trees, thin out the rest; VACUUM deletes the empty
-- leaves and recompresses the others.
DELETE FROM ga WHERE id BETWEEN 15000 AND 40000 OR id % 7 = 0;
VACUUM ga;
-- New rows land in the freed heap pages: TIDs in the middle of the posting trees.
INSERT INTO ga SELECT g, ARRAY[g % 2, 1000 + g % 80, 100000 + g] FROM generate_series(61501, 64000) g;
INSERT INTO ga SELECT g, ARRAY[g % 2, 1000 + g % 3] FROM generate_series(64001, 65000) g;

-- Long keys: few tuples per entry page, so internal entry pages split and the root
-- splits more than once.
CREATE TABLE gk (id int, t text[]) WITH (autovacuum_enabled = off);
CREATE INDEX gk_t ON gk USING gin (t) WITH (fastupdate = off);
INSERT INTO gk SELECT g, ARRAY[(SELECT string_agg(md5(random()::text || g || i), '')
                                 FROM generate_series(1, 30) i)]
  FROM generate_series(1, 400) g;
DELETE FROM gk WHERE id % 3 = 0;
VACUUM gk;

-- The pending list: tsvector with fastupdate, a small pending-list limit.
CREATE TABLE gf (id int, t tsvector) WITH (autovacuum_enabled = off);
CREATE INDEX gf_t ON gf USING gin (t) WITH (fastupdate = on, gin_pending_list_limit = 64);
INSERT INTO gf SELECT g, to_tsvector('simple', 'common w' || (g % 300) || ' u' || g)
  FROM generate_series(1, 2000) g;
SELECT gin_clean_pending_list('gf_t');
-- Rows with many keys each: new sublists of several list pages.
INSERT INTO gf SELECT g, to_tsvector('simple', (SELECT string_agg('k' || (g * 7 + i) % 5000, ' ')
                                                 FROM generate_series(1, 600) i))
  FROM generate_series(2001, 2012) g;
INSERT INTO gf SELECT g, to_tsvector('simple', 'common w' || (g % 300) || ' u' || g)
  FROM generate_series(2013, 3500) g;
DELETE FROM gf WHERE id % 4 = 0;
VACUUM gf;
INSERT INTO gf SELECT g, to_tsvector('simple', 'common x' || (g % 50)) FROM generate_series(3501, 3800) g;
SELECT gin_clean_pending_list('gf_t');

-- A big pending list (loaded unchecked) moved into the main tree in one go: posting
-- trees created with many TIDs at once (CREATE_PTREE), their leaves filled and split
-- (data leaf and root SPLITs) and the downlinks inserted into the posting-tree roots.
CREATE TABLE gp (id int, a int[]) WITH (autovacuum_enabled = off);
CREATE INDEX gp_a ON gp USING gin (a) WITH (fastupdate = on, gin_pending_list_limit = 8192);
SET wal_consistency_checking = '';
INSERT INTO gp SELECT g, ARRAY[0, 1, 2, 10 + g % 4, 100000 + g] FROM generate_series(1, 20000) g;
RESET wal_consistency_checking;
SELECT gin_clean_pending_list('gp_a');
DELETE FROM gp WHERE id BETWEEN 3000 AND 12000;
VACUUM gp;

-- jsonb_path_ops, built over existing rows then fed through the pending list.
CREATE TABLE gj (id int, j jsonb) WITH (autovacuum_enabled = off);
INSERT INTO gj SELECT g, jsonb_build_object('k', g % 10, 'tags', jsonb_build_array(g % 3, 'x' || g % 97))
  FROM generate_series(1, 3000) g;
CREATE INDEX gj_j ON gj USING gin (j jsonb_path_ops);
INSERT INTO gj SELECT g, jsonb_build_object('k', g % 10, 'n', g) FROM generate_series(3001, 4000) g;
DELETE FROM gj WHERE id % 5 = 0;
VACUUM gj;
