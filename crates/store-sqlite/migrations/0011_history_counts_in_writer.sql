-- The reports' counts of close-lost changes and hand-overs (migration 0008) are now added by the writer's
-- own statements (`crates/store-sqlite/src/ops.rs`), in the same transaction as the change they count,
-- instead of by triggers on every history row.
--
-- A trigger costs every insert into its table, whether its WHEN clause holds or not: SQLite runs each
-- trigger as a sub-program with its own memory cells, and a statement with triggers keeps a statement
-- journal (a copy of every page it changes). In the benchmark's mix that was about a quarter of the writer
-- thread's instructions, for counts that only one history row in four changes. The writer knows when a
-- change is a close-lost (every such history row) and when a creation replaces records closed for an owner
-- change (the creation it is making), and runs the same statements the triggers ran, with the new row's
-- values as parameters. The audit's triggers stay: the audit of a CRM backend is written in few places and
-- not on the path of a local store's writes.
DROP TRIGGER history_counts_rejection;
DROP TRIGGER history_counts_handover;
