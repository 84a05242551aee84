-- An operator can hide an item from future digests (the console's "hide"): it
-- stays stored and its page keeps working for the digests that listed it already,
-- but no digest planned after `hidden_at` lists or counts it.
ALTER TABLE items ADD COLUMN hidden_at TIMESTAMPTZ;
