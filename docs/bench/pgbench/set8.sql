\set a0 random(1, 100000 * :scale)
\set a1 random(1, 100000 * :scale)
\set a2 random(1, 100000 * :scale)
\set a3 random(1, 100000 * :scale)
\set a4 random(1, 100000 * :scale)
\set a5 random(1, 100000 * :scale)
\set a6 random(1, 100000 * :scale)
\set a7 random(1, 100000 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = ANY(ARRAY[:a0::int,:a1::int,:a2::int,:a3::int,:a4::int,:a5::int,:a6::int,:a7::int]::int[]);
SELECT abalance FROM pgbench_accounts WHERE aid = ANY(ARRAY[:a0::int,:a1::int,:a2::int,:a3::int,:a4::int,:a5::int,:a6::int,:a7::int]::int[]);
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, a, :delta, CURRENT_TIMESTAMP FROM unnest(ARRAY[:a0::int,:a1::int,:a2::int,:a3::int,:a4::int,:a5::int,:a6::int,:a7::int]::int[]) AS a;
END;
