-- A batch of writes (the adapter's `batch` module) plans from what it read before it wrote, and writes in
-- one statement that changes each record only from the status it was planned from. When another writer
-- got there first, that statement must undo all it did, not only the part that no longer applies: this
-- function raises the error that does so, with the reason, from inside the statement.
CREATE FUNCTION crm_batch_conflict(what TEXT) RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'a batch of writes conflicted with another writer: %', what USING ERRCODE = '40001';
END
$$;
