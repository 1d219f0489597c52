-- Visibility map set and cleared: VACUUM marks pages all-visible and all-frozen, then
-- inserts, updates (same page and across pages), deletes and row locks clear the bits.
DROP TABLE IF EXISTS vis;
CREATE TABLE vis (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off, fillfactor = 90);
INSERT INTO vis SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g;
VACUUM (FREEZE) vis;
UPDATE vis SET v = 'y' WHERE id % 500 = 0;
UPDATE vis SET v = repeat('z', 400) WHERE id % 777 = 0;
DELETE FROM vis WHERE id % 700 = 0;
BEGIN;
SELECT count(*) FROM (SELECT * FROM vis WHERE id % 900 = 1 FOR UPDATE) s;
COMMIT;
BEGIN;
SELECT count(*) FROM (SELECT * FROM vis WHERE id % 1000 = 2 FOR SHARE) s;
COMMIT;
VACUUM vis;
INSERT INTO vis SELECT g, 'new' FROM generate_series(30001, 31000) g;
VACUUM (FREEZE) vis;
UPDATE vis SET v = 'again' WHERE id % 1300 = 0;
CHECKPOINT;
