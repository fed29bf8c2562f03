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
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a0;
SELECT abalance FROM pgbench_accounts WHERE aid = :a0;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a0, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a1;
SELECT abalance FROM pgbench_accounts WHERE aid = :a1;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a1, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a2;
SELECT abalance FROM pgbench_accounts WHERE aid = :a2;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a2, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a3;
SELECT abalance FROM pgbench_accounts WHERE aid = :a3;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a3, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a4;
SELECT abalance FROM pgbench_accounts WHERE aid = :a4;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a4, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a5;
SELECT abalance FROM pgbench_accounts WHERE aid = :a5;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a5, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a6;
SELECT abalance FROM pgbench_accounts WHERE aid = :a6;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a6, :delta, CURRENT_TIMESTAMP);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a7;
SELECT abalance FROM pgbench_accounts WHERE aid = :a7;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :a7, :delta, CURRENT_TIMESTAMP);
END;
