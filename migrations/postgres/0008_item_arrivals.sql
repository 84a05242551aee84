-- Each of an item's topics arrives on its own: the same press release coming later
-- from a feed of another topic adds that topic, and the readers of that topic get it
-- as news then. `arrival` is what digests follow: for the topics an item arrives
-- with it is the item's id; a topic added later draws a fresh number from the same
-- sequence as item ids (see Store::add_item).
ALTER TABLE item_topics ADD COLUMN arrival BIGINT NOT NULL DEFAULT 0;
UPDATE item_topics SET arrival = item_id;
ALTER TABLE item_topics ALTER COLUMN arrival DROP DEFAULT;
-- A digest batch reads each topic's newest arrivals; the watermark the newest of all.
CREATE INDEX item_topics_arrival ON item_topics (topic_id, arrival);
CREATE INDEX item_topics_newest ON item_topics (arrival);
-- The same press release under another guid is found by its URL (a prefix, so that
-- an index entry stays within PostgreSQL's size limit).
CREATE INDEX items_url ON items (substr(url, 1, 500));
