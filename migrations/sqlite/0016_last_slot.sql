-- The slot a reader's last digest served, on the reader's row: the pass writes it
-- with the next slot it writes anyway, and a slot at or before it is never served
-- again. It replaces the digest log's row per digest; the `digests` table is no
-- longer written and keeps the history it has.
ALTER TABLE subscribers ADD COLUMN last_slot_at TEXT;
UPDATE subscribers SET last_slot_at =
    (SELECT MAX(slot_at) FROM digests WHERE digests.subscriber_id = subscribers.id);
