-- A BRIN workload: an index build (create + revmap + summaries), inserts that summarize
-- new ranges (INSERT + UPDATE of range tuples, same-page and moved to another page as
-- summaries grow), enough ranges to extend the revmap past one page (1360 ranges per
-- revmap page with pages_per_range = 1), desummarize and resummarize, and an inclusion
-- (box) and a minmax-multi index whose tuples change size.
DROP TABLE IF EXISTS br, brbox;
CREATE TABLE br (id int, t timestamptz, label text) WITH (fillfactor = 100);
INSERT INTO br SELECT g, '2020-01-01'::timestamptz + g * interval '1 minute', 'a'
  FROM generate_series(1, 20000) g;
CREATE INDEX br_id ON br USING brin (id) WITH (pages_per_range = 1);
CREATE INDEX br_multi ON br USING brin (t timestamptz_minmax_multi_ops, label)
  WITH (pages_per_range = 4);
-- New rows past the summarized ranges, then summaries of the new ranges.
INSERT INTO br SELECT g, now() - g * interval '1 hour', md5(g::text)
  FROM generate_series(20001, 40000) g;
SELECT brin_summarize_new_values('br_id');
SELECT brin_summarize_new_values('br_multi');
-- Inserts into summarized ranges widen their summaries (updates of range tuples).
UPDATE br SET id = id * 7 % 100003, label = repeat(label, 3) WHERE id % 50 = 0;
SELECT brin_summarize_new_values('br_id');
-- Enough heap pages for more than one revmap page.
INSERT INTO br SELECT g, now(), repeat('z', 400) FROM generate_series(40001, 65000) g;
SELECT brin_summarize_new_values('br_id');
SELECT brin_summarize_new_values('br_multi');
-- Desummarize some ranges and summarize them again.
SELECT brin_desummarize_range('br_id', b) FROM generate_series(0, 200, 3) b;
SELECT brin_desummarize_range('br_multi', b) FROM generate_series(0, 400, 8) b;
SELECT brin_summarize_range('br_id', b) FROM generate_series(0, 200, 6) b;
SELECT brin_summarize_new_values('br_multi');
-- An inclusion index on boxes.
CREATE TABLE brbox (b box);
INSERT INTO brbox SELECT box(point(g, g), point(g + 1, g + 1)) FROM generate_series(1, 20000) g;
CREATE INDEX brbox_b ON brbox USING brin (b) WITH (pages_per_range = 2);
INSERT INTO brbox SELECT box(point(-g * 10, 0), point(g * 100, 5)) FROM generate_series(1, 5000) g;
SELECT brin_summarize_new_values('brbox_b');
DELETE FROM br WHERE id % 3 = 0;
VACUUM br;
SET enable_seqscan = off;
SELECT count(*) FROM br WHERE id BETWEEN 1000 AND 2000;
SELECT count(*) FROM brbox WHERE b && box(point(0, 0), point(10, 10));
