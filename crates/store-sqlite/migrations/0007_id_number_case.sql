-- `idNumber` is compared case-insensitively (`b1234567` and `B1234567` are one passport): the service keeps
-- it upper-cased from now on, and this brings the rows written before into that form.
--
-- Two open records of one type whose keys differ only by case would become two open records of one key,
-- which the unique index refuses. So, before anything is renamed, the older of such records (by `seq`)
-- are set to `Close Lost` with the reason `ID_NUMBER_CASE_MERGED`, written in their history under the
-- request id `migration-0007`: the newest stays open, as a create's "newest first" reading would keep it.
-- The whole file runs in one transaction; it cannot stop half-way.

CREATE TEMP TABLE id_number_case_merged AS
SELECT r.id, r.status
FROM records r
WHERE r.status IN ('New Lead', 'New Opportunity')
  AND EXISTS (
      SELECT 1 FROM records n
      WHERE n.status IN ('New Lead', 'New Opportunity')
        AND n.record_type = r.record_type
        AND n.seq > r.seq
        AND upper(n.id_number) || substr(n.match_key, length(n.id_number) + 1)
          = upper(r.id_number) || substr(r.match_key, length(r.id_number) + 1));

INSERT INTO history (record_id, from_status, to_status, at, request_id, channel, reason)
SELECT id, status, 'Close Lost', strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z', 'migration-0007',
       'MIGRATION', 'ID_NUMBER_CASE_MERGED'
FROM id_number_case_merged;

UPDATE records
SET status = 'Close Lost', updated_at = strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z'
WHERE id IN (SELECT id FROM id_number_case_merged);

DROP TABLE id_number_case_merged;

-- The matching key starts with the id number (`ID/PRODUCT`, or `ID` when matching by id number alone).
UPDATE records
SET match_key = upper(id_number) || substr(match_key, length(id_number) + 1), id_number = upper(id_number)
WHERE id_number <> upper(id_number);

-- A CRM backend's audit and key locks name the matching key too.
UPDATE audit
SET match_key = CASE WHEN instr(match_key, '/') > 0
                     THEN upper(substr(match_key, 1, instr(match_key, '/') - 1)) || substr(match_key, instr(match_key, '/'))
                     ELSE upper(match_key) END
WHERE match_key <> upper(match_key);
