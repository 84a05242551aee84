-- Items, per-reader digest state, the digest log, and the key for link tokens.

CREATE TABLE items (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'guid:…' or 'url:…': the same item posted again is recognised by it.
    dedup_key    TEXT UNIQUE,
    title        TEXT NOT NULL,
    url          TEXT,
    summary      TEXT,
    body         TEXT,
    published_at TEXT,
    source       TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE item_topics (
    item_id  INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    topic_id INTEGER NOT NULL REFERENCES topics (id),
    PRIMARY KEY (item_id, topic_id)
);
CREATE INDEX item_topics_topic ON item_topics (topic_id, item_id);

-- When the reader's next digest is due, and the newest item (by arrival) that any
-- of their digests has covered.
ALTER TABLE subscribers ADD COLUMN next_slot_at TEXT;
ALTER TABLE subscribers ADD COLUMN last_item_id INTEGER NOT NULL DEFAULT 0;
CREATE INDEX subscribers_due ON subscribers (next_slot_at) WHERE status = 'confirmed';

-- One row per reader and slot: the guarantee of at most one digest per slot.
CREATE TABLE digests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    slot_at       TEXT NOT NULL,
    item_count    INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (subscriber_id, slot_at)
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
