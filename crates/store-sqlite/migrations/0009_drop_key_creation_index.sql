-- Every create wrote an entry into `records_by_key_creation` (match_key, record_type, created_at), at a place
-- in the index set by the customer, so a page of its own: about one WAL page in seven of the benchmark's mix
-- (`pwrite` calls on the writer thread, 6.55 a request with it, 5.61 without).
--
-- What read it finds its rows as well without it:
-- - the hand-over count (`history_counts_handover`, 0008) starts from the new record's id and the close-lost
--   changes at its instant (`history_close_lost`), and reaches the replaced records by id;
-- - the hand-over report's ragged ends join the replacing record by its creation instant, which leads
--   `records_by_creation` (0006).
DROP INDEX records_by_key_creation;
