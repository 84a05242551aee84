-- The slot a reader's last digest served, on the reader's row: the pass writes it
-- with the next slot it writes anyway, and a slot at or before it is never served
-- again. It replaces the digest log's row per digest (an insert, two index entries
-- and a foreign-key check for every reader of a fan-out); the `digests` table is
-- no longer written and keeps the history it has.
ALTER TABLE subscribers ADD COLUMN last_slot_at TIMESTAMPTZ;
UPDATE subscribers SET last_slot_at = served.slot_at
FROM (SELECT subscriber_id, MAX(slot_at) AS slot_at FROM digests GROUP BY subscriber_id) AS served
WHERE served.subscriber_id = subscribers.id;
