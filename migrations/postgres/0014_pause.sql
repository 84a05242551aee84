-- A reader can pause their digests until a date (the preferences page): no digest
-- on their local dates up to and including `paused_until`; NULL = not paused. The
-- reader's watermark stays where it was during a pause, so the first digest after
-- it lists what arrived meanwhile. Each preference change keeps the pause it set.
ALTER TABLE subscribers ADD COLUMN paused_until DATE;
ALTER TABLE preference_changes ADD COLUMN paused_until DATE;
