-- The tables' CHECK rules with their lists of values written as comparisons: the same rules, faster.
--
-- SQLite (as the service links it) checks `x IN (a, b, ...)` against a list of constants by building a
-- temporary B-tree of the list, once per statement: every insert of a record opened and filled four (a
-- page cache and a zeroed page each: the record type, the status, the customer type), every status update
-- two, and that was about a sixth of the writer thread's instructions in the benchmark's mix (callgrind;
-- `EXPLAIN` shows the `OpenEphemeral`). `x = a OR x = b` is checked in place.
--
-- A CHECK rule cannot be altered, and rebuilding a table would copy every row (gigabytes at ten million
-- records). The rules allow exactly the same values either way, so no row changes meaning, and SQLite's own
-- procedure for such a change applies: the table's CREATE statement is rewritten in sqlite_schema, and the
-- migration runner then increments the schema version so that every connection reads the schema again
-- (`crates/store-sqlite/src/schema.rs`).
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(replace(replace(replace(sql,
        'record_type IN (''LEAD'', ''OPPORTUNITY'')',
        '(record_type = ''LEAD'' OR record_type = ''OPPORTUNITY'')'),
        'status IN (''New Lead'', ''Close Won'', ''Close Lost'')',
        '(status = ''New Lead'' OR status = ''Close Won'' OR status = ''Close Lost'')'),
        'status IN (''New Opportunity'', ''Close Won'', ''Close Lost'')',
        '(status = ''New Opportunity'' OR status = ''Close Won'' OR status = ''Close Lost'')'),
        'customer_type IN (''NTB'', ''ETB'')',
        '(customer_type = ''NTB'' OR customer_type = ''ETB'')')
WHERE type = 'table' AND name IN ('records', 'audit');
UPDATE sqlite_schema
SET sql = replace(sql, 'state IN (''running'', ''done'')', '(state = ''running'' OR state = ''done'')')
WHERE type = 'table' AND name = 'idempotency_keys';
PRAGMA writable_schema = OFF;
