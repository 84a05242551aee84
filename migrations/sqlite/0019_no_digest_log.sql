-- The digest log (`digests`, one row per reader and served slot) has not been
-- written since migration 0016 moved the last served slot onto the reader's row,
-- and nothing reads it. It still held every reader's slots from before that, with
-- no retention to purge them (only a reader's erasure removed theirs): a history
-- of personal data kept for no purpose. It goes.
DROP TABLE IF EXISTS digests;
